"""How the ONNX Runtime engine runs an int8 graph (cortex.engine.onnx): a one-thread session for runs in
parallel and an all-core one for a run the scheduler says is alone, both giving the vectors a session with
ONNX Runtime's defaults gives; an fp32 graph keeps its one session and takes the hint as a no-op."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cortex.convert.onnx_model import GRAPH_FILE, TOKENIZER_FILE, write_onnx_model
from cortex.convert.st_folder import read_st_folder
from cortex.engine.graph_file import graph_feed
from cortex.engine.onnx import OnnxEngine
from tests import DATA

TEXTS = ["Hello world.", "A somewhat longer sentence, with punctuation; and more words in it than the first.", "x"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    st = read_st_folder(DATA / "arch" / "bert-cased")
    out = {}
    for precision in ("fp32", "int8"):
        out[precision] = tmp_path_factory.mktemp(precision)
        write_onnx_model(st, out[precision], "int8" if precision == "int8" else None)
    return out


def _default_session_vectors(folder: Path, seqs: list[list[int]]) -> np.ndarray:
    """What a session with every ONNX Runtime default (all its fusions) gives."""
    session = ort.InferenceSession(str(folder / GRAPH_FILE), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in graph_feed([s], None, None).items() if k in names})[0]
                           for s in seqs])  # fmt: skip


def test_int8_runs_alone_or_in_parallel_give_the_default_sessions_vectors(folders: dict[str, Path]) -> None:
    folder = folders["int8"]
    engine = OnnxEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=128, n_threads=2, precision="int8")
    assert engine.solo_runs and engine.workers == 2
    seqs = [engine.tokenize(t) for t in TEXTS]
    want = _default_session_vectors(folder, seqs)
    alone = np.concatenate([engine.embed([s], alone=True) for s in seqs])
    parallel: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(20):
            parallel[i] = engine.embed([seqs[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    side_by_side = np.concatenate([parallel[i] for i in range(len(seqs))])
    np.testing.assert_allclose(alone, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(side_by_side, want, rtol=0, atol=1e-4)
    engine.close()


def test_fp32_keeps_one_session_and_the_hint_changes_nothing(folders: dict[str, Path]) -> None:
    folder = folders["fp32"]
    engine = OnnxEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=128, n_threads=2)
    assert not engine.solo_runs
    seqs = [engine.tokenize(t) for t in TEXTS]
    want = _default_session_vectors(folder, seqs)
    for s, row in zip(seqs, want, strict=True):
        np.testing.assert_allclose(engine.embed([s], alone=True)[0], row, rtol=0, atol=1e-5)
        np.testing.assert_allclose(engine.embed([s])[0], row, rtol=0, atol=1e-5)
    engine.close()


def test_a_one_core_int8_engine_keeps_one_session(folders: dict[str, Path]) -> None:
    folder = folders["int8"]
    engine = OnnxEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=128, n_threads=1, precision="int8")
    assert not engine.solo_runs and engine.workers == 1
    assert engine.embed([engine.tokenize("one core")], alone=True).shape == (1, engine.n_embd)
    engine.close()
