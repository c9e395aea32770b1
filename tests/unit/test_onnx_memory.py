"""What the ONNX Runtime engine holds in memory (bench/memory.py measures it): only the tables that Gather
nodes read are loaded by cortex and handed to the session, every other weight is left to ONNX Runtime
(which frees its unpacked copy after pre-packing), a second tokenizer only for cross-encoders, and none of
this changes a vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cortex.convert.onnx_model import DATA_FILE, GRAPH_FILE, TOKENIZER_FILE, write_onnx_model
from cortex.convert.st_folder import read_st_folder
from cortex.engine.onnx import OnnxEngine, gathered_only, load_shared_weights
from tests import DATA

TEXTS = ["Hello world.", "A somewhat longer sentence, with punctuation; and more words in it than the first."]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("bert-onnx")
    write_onnx_model(read_st_folder(DATA / "arch" / "bert-cased"), dest, None)
    return dest


def test_only_the_gathered_tables_are_loaded_and_every_weight_is_counted(model: Path) -> None:
    graph = onnx.load(str(model / GRAPH_FILE), load_external_data=False).graph
    shared, total = load_shared_weights(model / GRAPH_FILE)
    external = {i.name for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    assert set(shared) == gathered_only(graph) & external
    assert shared  # the word embeddings at least
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"} & external
    assert matmul_weights and not matmul_weights & set(shared)  # left to ONNX Runtime to load and pre-pack
    assert total == (model / DATA_FILE).stat().st_size  # memory_bytes still counts all the weights


def test_gathered_only_leaves_out_a_table_that_another_node_reads_too() -> None:
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Gather", ["emb", "ids"], ["x"]),
            onnx.helper.make_node("Gather", ["tied", "ids"], ["y"]),
            onnx.helper.make_node("MatMul", ["x", "tied"], ["z"]),
            onnx.helper.make_node("Gather", ["z", "idx"], ["out"]),
        ],
        "g",
        [],
        [],
        [onnx.numpy_helper.from_array(np.zeros((4, 4), np.float32), name) for name in ("emb", "tied", "unused")]
        + [onnx.numpy_helper.from_array(np.zeros(1, np.int64), "idx")],
    )
    # `tied` is a MatMul weight too, `idx` is Gather's index, `unused` no node reads, `z` is no initializer
    assert gathered_only(graph) == {"emb"}


def test_vectors_are_those_of_a_session_that_loads_everything_itself(model: Path) -> None:
    engine = OnnxEngine(model / GRAPH_FILE, model / TOKENIZER_FILE, ctx_len=128, n_threads=2)
    plain = ort.InferenceSession(str(model / GRAPH_FILE), providers=["CPUExecutionProvider"])
    for text in TEXTS:
        ids = engine.tokenize(text)
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        feed |= {i.name: np.zeros(1, np.int64) for i in plain.get_inputs() if i.name not in feed}
        expected = plain.run(None, feed)[0]
        assert np.array_equal(engine.embed([ids]), expected)
        assert np.array_equal(engine.embed([ids]), expected)


def test_only_a_cross_encoder_holds_a_second_tokenizer_for_cutting_pairs(
    model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ce = tmp_path_factory.mktemp("ce-onnx")
    write_onnx_model(read_st_folder(DATA / "cross-encoder-tiny"), ce, None)
    embedder = OnnxEngine(model / GRAPH_FILE, model / TOKENIZER_FILE, ctx_len=128, n_threads=1)
    reranker = OnnxEngine(ce / GRAPH_FILE, ce / TOKENIZER_FILE, ctx_len=16, n_threads=1)
    assert embedder._pair_cutter is None and reranker._pair_cutter is not None
    (ids,), _ = reranker.tokenize_pairs("a query of several words", ["a document " * 20], truncate=True)
    assert len(ids) == 16  # the cutter still cuts the pair to the context
