"""Throughput of this tree against another git revision, interleaved on one machine: for a change that must
not cost throughput (issue 17's fair scheduling: at most 5%).

    .venv/bin/python bench/ab_load.py REV [--engine onnxruntime|llama-cpp] [--precision fp32|int8|bf16]
                                          [--threads 2] [--shapes 8x1,1x32,8x32] [--inputs 512] [--rounds 3]

Starts two cortex servers (default configuration) with the same model (all-MiniLM-L6-v2 on onnxruntime
at `--precision`, fp32 by default, or Gemma 3 270M Q4_K_M on llama-cpp): one running the `src/` of git
revision REV (`git archive`, first on its PYTHONPATH, same Python environment), one this tree. For each
round and each shape (clients x inputs per request) it drives REV's server, then this tree's, with
bench/load.py for about INPUTS inputs, so a change in the machine's load falls on both alike; an idle
server costs nothing. Prints the median inputs/s per shape and server, and this tree's over REV's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server, source_of  # noqa: E402

MODELS = {"onnxruntime": "all-minilm", "llama-cpp": "gemma3:270m"}


def drive(base: str, model: str, clients: int, batch: int, inputs: int) -> float:
    requests = max(clients, inputs // batch)
    cmd = [sys.executable, str(HERE / "load.py"), f"{base}/v1/embeddings", model, "--concurrency", str(clients),
           "--batch", str(batch), "--requests", str(requests)]  # fmt: skip
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=1800).stdout)
    # the corpus holds one sentence over the context (a 400 by design): a few errors are that one
    if out["errors"] > requests // 50 + 1:
        raise RuntimeError(f"load.py: {out['errors']} errors, first {out['first_error']}")
    return out["inputs_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev")
    ap.add_argument("--engine", choices=sorted(MODELS), default="onnxruntime")
    ap.add_argument("--precision", choices=("fp32", "int8", "bf16"), help="of the onnxruntime kind's model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="8x1,1x32,8x32")
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = MODELS[args.engine]
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    names = [f"rev {args.rev}", "this tree"]
    body = {"precision": args.precision} if args.precision else {}
    envs = [{"PYTHONPATH": str(source_of(args.rev))}, {}]
    rates: dict[tuple[int, int], list[list[float]]] = {shape: [[], []] for shape in shapes}
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(cortex_server({model: body}, args.threads, "cortex-ab-", env))[1] for env in envs]
        for base in bases:  # warm-up
            drive(base, model, 8, 8, 256)
        for _ in range(args.rounds):
            for shape in shapes:
                for i, base in enumerate(bases):
                    rates[shape][i].append(drive(base, model, *shape, args.inputs))
    kind = f"{args.engine}, {args.precision}" if args.precision else args.engine
    print(f"{model} ({kind}), {args.threads} threads, inputs/s, median of {args.rounds} interleaved rounds")
    print(f"| shape (clients, inputs per request) | {names[0]} | {names[1]} | this / rev |")
    print("|---|---|---|---|")
    for shape, (old, new) in rates.items():
        each = [" ".join(f"{x:.0f}" for x in runs) for runs in (old, new)]
        a, b = statistics.median(old), statistics.median(new)
        print(f"| {shape} | {a:.0f} ({each[0]}) | {b:.0f} ({each[1]}) | {b / a:.3f} |")


if __name__ == "__main__":
    main()
