"""The scheduler's own cost per input, without inference: this tree's BatchScheduler against git revision
REV's, on engines that answer at once, so what is measured is queueing, packing and the hop to the
engine's threads, and a busy machine blurs it less than an HTTP benchmark.

    .venv/bin/python bench/scheduler_cost.py REV [--requests 8] [--inputs 32] [--rounds 7]

Each round, for each scheduler (REV's, then this tree's): `--requests` concurrent requests of `--inputs`
inputs (8-40 tokens) each, repeated until 20,000 inputs have run, on an engine shaped like ONNX Runtime's
(2 workers, one input per run) and one like llama.cpp's (1 worker, up to 64 inputs and 512 tokens per
batch). Prints the best (lowest) microseconds per input of process CPU time over the rounds; compare with
the few milliseconds an input of ~40 tokens takes to infer.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import source_of  # noqa: E402

TOTAL = 20_000


class InstantEngine:
    """The scheduler's view of an engine (cortex.engine.base.Engine), answering zeros at once."""

    n_embd = 4
    n_ctx = 256

    def __init__(self, workers: int, max_batch_seqs: int, max_batch_tokens: int) -> None:
        self.workers, self.max_batch_seqs, self.max_batch_tokens = workers, max_batch_seqs, max_batch_tokens

    def embed(self, seqs, starts=None) -> np.ndarray:
        return np.zeros((len(seqs), self.n_embd), dtype=np.float32)


ENGINES = {"onnxruntime-like": (2, 1, 256), "llama-cpp-like": (1, 64, 512)}


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


async def run(module: ModuleType, shape: tuple[int, int, int], requests: int, inputs: int) -> float:
    """Process CPU microseconds per input for TOTAL inputs."""
    rnd = random.Random(0)
    sched = module.BatchScheduler(InstantEngine(*shape), model_id="m", max_queue_inputs=1_000_000)
    seqs = [[[1] * rnd.randint(8, 40) for _ in range(inputs)] for _ in range(requests)]
    t0 = time.process_time()
    for _ in range(TOTAL // (requests * inputs)):
        await asyncio.gather(*(sched.embed(s) for s in seqs))
    cpu = time.process_time() - t0
    await sched.close()
    return cpu / (TOTAL // (requests * inputs) * requests * inputs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    path = Path("cortex/runtime/scheduler.py")
    modules = {f"rev {args.rev}": load(source_of(args.rev) / path, "scheduler_rev"),
               "this tree": load(HERE.parent / "src" / path, "scheduler_this")}  # fmt: skip
    best = {(e, m): float("inf") for e in ENGINES for m in modules}
    for _ in range(args.rounds):
        for engine, shape in ENGINES.items():
            for name, module in modules.items():
                cost = asyncio.run(run(module, shape, args.requests, args.inputs))
                best[engine, name] = min(best[engine, name], cost)
    print(f"{args.requests} concurrent requests x {args.inputs} inputs, CPU us per input, best of {args.rounds}")
    print(f"| engine shape | {' | '.join(modules)} |")
    print("|---|" + "---|" * len(modules))
    for engine in ENGINES:
        print(f"| {engine} | {' | '.join(f'{best[engine, m]:.1f}' for m in modules)} |")


if __name__ == "__main__":
    main()
