"""What a folder's files promise and cortex cannot compute exactly is refused at import (400), not served
wrong or failing later with a 500: modules beyond Transformer/Pooling/Normalize, heads that do not divide the
hidden size, a context of no tokens, a position table shorter than the context; the tanh GELU is computed
as the tanh GELU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cortex.convert.onnx_model import write_onnx_model
from cortex.convert.st_folder import read_st_folder
from cortex.engine.onnx import OnnxEngine
from cortex.errors import InvalidModelFile
from tests import DATA

CASED = DATA / "arch" / "bert-cased"
XLMR = DATA / "arch" / "xlm-roberta"


def _copy(tmp_path: Path, source: Path = CASED, **config: object) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return folder


def test_a_dense_module_after_the_pooling_is_refused_not_ignored(tmp_path: Path) -> None:
    folder = _copy(tmp_path, XLMR)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InvalidModelFile, match="Dense module, which cortex does not compute"):
        read_st_folder(folder)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"num_attention_heads": 5}, "not a multiple of num_attention_heads"),
        ({"max_position_embeddings": 1}, "too few for any text"),
    ],
)
def test_configs_no_graph_can_follow_are_refused(tmp_path: Path, config: dict, words: str) -> None:
    with pytest.raises(InvalidModelFile, match=words):
        read_st_folder(_copy(tmp_path, **config))


def test_a_position_table_shorter_than_the_context_is_refused_at_import(tmp_path: Path) -> None:
    folder = _copy(tmp_path, max_position_embeddings=4096)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096}))
    with pytest.raises(InvalidModelFile, match="position embeddings"):
        write_onnx_model(read_st_folder(folder), tmp_path, None)


def _vector(folder: Path, out: Path) -> np.ndarray:
    out.mkdir()
    write_onnx_model(read_st_folder(folder), out, None)
    engine = OnnxEngine(out / "model.onnx", out / "tokenizer.json", ctx_len=256, n_threads=1)
    try:
        return engine.embed([engine.tokenize("The tanh approximation of GELU is not GELU.")])[0]
    finally:
        engine.close()


def test_gelu_new_is_computed_as_the_tanh_approximation(tmp_path: Path) -> None:
    exact = _vector(CASED, tmp_path / "erf")
    tanh = _vector(_copy(tmp_path, hidden_act="gelu_new"), tmp_path / "tanh")
    assert not np.array_equal(exact, tanh)  # before, gelu_new was silently computed as the erf GELU
    assert float(exact @ tanh / np.linalg.norm(exact) / np.linalg.norm(tanh)) > 0.999  # and they stay close
