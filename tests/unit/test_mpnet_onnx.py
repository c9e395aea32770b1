"""The MPNet graph builder (cortex.convert.mpnet_onnx) on the random-weight fixture: the relative position
buckets as transformers computes them, positions counted after the padding index, padded batches, the
weights of a task model (under `mpnet.`), and what it refuses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from cortex.convert.mpnet_onnx import build_mpnet_onnx, relative_position_buckets
from cortex.convert.st_folder import read_st_folder
from cortex.errors import InvalidModelFile
from tests import DATA

FOLDER = DATA / "arch" / "mpnet"


def _hf_buckets(relative: np.ndarray, dtype: type) -> np.ndarray:
    """MPNetEncoder.relative_position_bucket's float arithmetic, in `dtype`."""
    n = -relative
    ret = (n < 0).astype(np.int64) * 16
    n = np.abs(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(n.astype(dtype) / dtype(8)) / dtype(math.log(16)) * dtype(8)
        large = 8 + np.where(n < 8, 0, ratio).astype(np.int64)
    return ret + np.where(n < 8, n, np.minimum(large, 15))


def test_buckets_are_transformers_for_every_distance_below_2048() -> None:
    relative = np.arange(-2047, 2048)
    ours = relative_position_buckets(relative)
    assert np.array_equal(ours, _hf_buckets(relative, np.float32))
    assert np.array_equal(ours, _hf_buckets(relative, np.float64))
    # the shape of T5's bidirectional buckets: 0 for itself, 16 onwards for keys after the query
    assert relative_position_buckets(np.array([0, -1, 1, -7, 7, -16, 16, -64, 64, -500, 500])).tolist() == [
        0, 1, 17, 7, 23, 10, 26, 14, 30, 15, 31,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    out = tmp_path_factory.mktemp("mpnet") / "model.onnx"
    build_mpnet_onnx(read_st_folder(FOLDER), out)
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, rows: list[list[int]]) -> np.ndarray:
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _reference_rows() -> list[dict]:
    return json.loads((DATA / "arch" / "mpnet.reference.json").read_text())["short"]


def test_graph_gives_the_reference_vectors(session: ort.InferenceSession) -> None:
    for row in _reference_rows()[:8]:
        got = _run(session, [row["tokens"]])[0]
        ref = np.array(row["embedding"])
        assert got @ ref / np.linalg.norm(got) / np.linalg.norm(ref) >= 0.99999


def test_a_padded_batch_gives_each_row_its_own_vector(session: ort.InferenceSession) -> None:
    rows = [r["tokens"] for r in _reference_rows()[:6]]
    assert len({len(r) for r in rows}) > 1
    together = _run(session, rows)
    for i, row in enumerate(rows):
        assert np.abs(together[i] - _run(session, [row])[0]).max() < 1e-5


def test_positions_count_only_non_padding_ids(session: ort.InferenceSession) -> None:
    """MPNet numbers positions by counting ids other than the padding id (1), from 2: a row padded on the
    left with id 1 (masked) gives its real tokens the positions they have alone, so the same vector; were
    positions the column index, they would shift."""
    tokens = _reference_rows()[0]["tokens"]
    ids = np.array([[1, 1, 1, *tokens]], dtype=np.int64)
    mask = np.array([[0, 0, 0] + [1] * len(tokens)], dtype=np.int64)
    left = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.abs(left[0] - _run(session, [tokens])[0]).max() < 1e-5
    shifted = session.run(None, {"input_ids": np.where(ids == 1, 3, ids), "attention_mask": mask})[0]
    assert np.abs(shifted[0] - left[0]).max() > 1e-3  # the same tokens three positions on


def test_a_task_model_keeps_its_encoder_under_mpnet(tmp_path: Path, session: ort.InferenceSession) -> None:
    folder = tmp_path / "masked-lm"
    shutil.copytree(FOLDER, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({f"mpnet.{k}": v for k, v in weights.items() if not k.startswith("pooler.")},
              folder / "model.safetensors")  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MPNetForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "model.onnx"
    build_mpnet_onnx(read_st_folder(folder), out)
    tokens = _reference_rows()[0]["tokens"]
    got = _run(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), [tokens])
    assert np.array_equal(got, _run(session, [tokens]))


def test_positions_after_the_padding_index_leave_two_fewer_for_tokens(tmp_path: Path) -> None:
    assert read_st_folder(FOLDER).max_seq_length == 384  # sentence_bert_config.json's
    folder = tmp_path / "plain"
    shutil.copytree(FOLDER, folder)
    (folder / "sentence_bert_config.json").unlink()
    model = read_st_folder(folder)
    assert (model.architecture, model.max_seq_length) == ("mpnet", 512)  # 514 positions, the first at 2
    build_mpnet_onnx(model, tmp_path / "model.onnx")


def test_a_cross_encoder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ce"
    shutil.copytree(FOLDER, folder)
    (folder / "modules.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["MPNetForSequenceClassification"], id2label={"0": "LABEL_0"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelFile, match="mpnet cross-encoder; cortex reranks with BERT"):
        read_st_folder(folder)
