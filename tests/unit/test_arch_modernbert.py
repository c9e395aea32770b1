"""The ModernBERT graph builder in process: its reading of config.json (layer types, rotary bases), the
graph against sentence-transformers' vectors (alone and in padded batches), task-model weights under
`model.`, and its refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from safetensors.numpy import load_file, save_file

from cortex.convert.modernbert_onnx import FULL, SLIDING, build_modernbert_onnx, layer_types, rope_theta
from cortex.convert.onnx_ops import GraphBuilder, gelu_tanh
from cortex.convert.st_folder import read_st_folder
from cortex.errors import InvalidModelFile
from tests import DATA

FIXTURE = DATA / "arch" / "modernbert"
REFERENCE = json.loads((DATA / "arch" / "modernbert.reference.json").read_text())


def _session(folder: Path, tmp_path: Path) -> ort.InferenceSession:
    out = tmp_path / "model.onnx"
    build_modernbert_onnx(read_st_folder(folder), out)
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, seqs: list[list[int]]) -> np.ndarray:
    ids = np.zeros((len(seqs), max(map(len, seqs))), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0].astype(np.float64)


def _worst(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(least cosine, largest length difference) over the rows."""
    got_len, ref_len = np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1)
    return float(np.min(np.sum(got * ref, axis=1) / (got_len * ref_len))), float(np.max(np.abs(got_len - ref_len)))


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(FIXTURE, folder)
    return folder


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_the_folder_reads_as_modernbert() -> None:
    m = read_st_folder(FIXTURE)
    assert (m.architecture, m.tokenizer_model, m.lowercase) == ("modernbert", "BPE", False)
    assert (m.pooling, m.normalize, m.max_seq_length, m.n_embd) == ("cls", False, 512, 96)


def test_graph_gives_the_reference_vectors_alone_and_in_padded_batches(tmp_path: Path) -> None:
    session = _session(FIXTURE, tmp_path)
    short = REFERENCE["short"]
    ref = np.array([r["embedding"] for r in short])
    alone = np.concatenate([_run(session, [r["tokens"]]) for r in short])
    batched = _run(session, [r["tokens"] for r in short])  # padded to the longest: band and padding masks at once
    for got in (alone, batched):
        cosine, length = _worst(got, ref)
        assert cosine >= 0.99999 and length <= 1e-3, (cosine, length)
    long = REFERENCE["long"]  # cut as sentence-transformers cuts it: [CLS], 510 tokens, [SEP]
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(FIXTURE / "tokenizer.json")).encode(long["text"]).ids
    cosine, length = _worst(_run(session, [[*ids[:511], ids[-1]]]), np.array([long["embedding"]]))
    assert cosine >= 0.99999 and length <= 1e-3


def test_queries_a_chunk_at_a_time_give_the_same_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention runs QUERY_CHUNK queries per loop step (bounded memory on long inputs): with chunks of 7,
    every text but the shortest takes several steps, the last one partial, in padded batches too."""
    from cortex.convert import modernbert_onnx

    monkeypatch.setattr(modernbert_onnx, "QUERY_CHUNK", 7)
    session = _session(FIXTURE, tmp_path)
    short = REFERENCE["short"]
    cosine, length = _worst(_run(session, [r["tokens"] for r in short]), np.array([r["embedding"] for r in short]))
    assert cosine >= 0.99999 and length <= 1e-3, (cosine, length)


def test_a_task_model_s_weights_under_model_give_the_same_vectors(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({f"model.{k}": v for k, v in tensors.items()}, folder / "model.safetensors")
    _edit_config(folder, architectures=["ModernBertForMaskedLM"])
    tokens = [r["tokens"] for r in REFERENCE["short"][:4]]
    (tmp_path / "plain").mkdir()
    plain = _run(_session(FIXTURE, tmp_path / "plain"), tokens)
    prefixed = _run(_session(folder, tmp_path), tokens)
    np.testing.assert_allclose(prefixed, plain, rtol=0, atol=1e-6)


def test_layer_types_and_rotary_bases_from_either_config_style() -> None:
    assert layer_types({"num_hidden_layers": 4, "global_attn_every_n_layers": 2}) == [FULL, SLIDING, FULL, SLIDING]
    assert layer_types({"num_hidden_layers": 4}) == [FULL, SLIDING, SLIDING, FULL]  # ModernBertConfig: every 3rd
    assert layer_types({"num_hidden_layers": 2, "layer_types": [SLIDING, FULL]}) == [SLIDING, FULL]
    for bad in ({"layer_types": [FULL]}, {"layer_types": [FULL, "chunked"]}, {"global_attn_every_n_layers": 0}):
        with pytest.raises(InvalidModelFile, match=r"layer_types|global_attn_every_n_layers"):
            layer_types({"num_hidden_layers": 2, **bad})
    old = {"global_rope_theta": 80000.0, "local_rope_theta": 5000.0}
    assert (rope_theta(old, FULL), rope_theta(old, SLIDING)) == (80000.0, 5000.0)
    assert (rope_theta({}, FULL), rope_theta({}, SLIDING)) == (160000.0, 10000.0)
    new = {"rope_parameters": {FULL: {"rope_type": "default", "rope_theta": 1e6}, SLIDING: {"rope_type": "default"}}}
    assert (rope_theta(new, FULL), rope_theta(new, SLIDING)) == (1e6, 10000.0)
    with pytest.raises(InvalidModelFile, match="`yarn` is not supported"):
        rope_theta({"rope_parameters": {FULL: {"rope_type": "yarn", "factor": 4.0}}}, FULL)


def test_gelu_tanh_is_the_tanh_approximation() -> None:
    b = GraphBuilder()
    y = gelu_tanh(b, "x")
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], b.inits)  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.astype(np.float64) ** 3)))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"hidden_activation": "silu"}, "Activation `silu` is not supported"),
        ({"norm_bias": True}, "lacks tensor 'embeddings.norm.bias'"),
        ({"local_attention": 0}, "local_attention must be a positive integer"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "`linear` is not supported"),
        ({"architectures": ["ModernBertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}, "cross-encoders"),
    ],
)
def test_what_it_cannot_build_exactly_is_refused(tmp_path: Path, changes: dict, words: str) -> None:
    folder = _copy(tmp_path)
    _edit_config(folder, **changes)
    if "id2label" in changes:  # a plain transformers classifier: no sentence-transformers modules
        (folder / "modules.json").unlink()
    with pytest.raises(InvalidModelFile, match=words):
        build_modernbert_onnx(read_st_folder(folder), tmp_path / "model.onnx")


def test_byte_level_pieces_are_the_bytes_they_stand_for(tmp_path: Path) -> None:
    from cortex.convert.onnx_model import GRAPH_FILE, TOKENIZER_FILE, write_onnx_model
    from cortex.engine.onnx import OnnxEngine

    write_onnx_model(read_st_folder(FIXTURE), tmp_path, None)
    engine = OnnxEngine(tmp_path / GRAPH_FILE, tmp_path / TOKENIZER_FILE, ctx_len=512, n_threads=1)
    try:
        toks = engine.tokens("naïve café — déjà vu")
        assert [t.piece for t in toks[:5]] == [b"[CLS]", b"n", b"a", b"\xc3", b"\xaf"]  # 'ï' is two byte tokens
        assert toks[6].piece == b" ca"  # 'Ġca'
        for row in REFERENCE["short"]:  # NFC texts: the pieces between [CLS] and [SEP] spell the text's bytes
            toks = engine.tokens(row["text"])
            assert b"".join(t.piece for t in toks[1:-1]) == row["text"].encode("utf-8")
    finally:
        engine.close()
