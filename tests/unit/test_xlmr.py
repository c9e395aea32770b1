"""XLM-RoBERTa (and RoBERTa) folders: what st_folder reads from them, the graph's position ids against
padding, and which engine kinds take them. The vectors against sentence-transformers: tests/e2e/test_arch_xlmr.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from cortex.convert.onnx_model import GRAPH_BUILDERS
from cortex.convert.st_folder import read_st_folder
from cortex.engine.kinds import ImportOptions, Source, choose
from cortex.errors import InvalidModelFile, InvalidRequest
from tests import DATA

FIXTURE = DATA / "arch" / "xlm-roberta"


def _folder(tmp_path: Path, config: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the fixture with `config` merged into config.json and the `drop` keys taken out of it."""
    folder = tmp_path / "xlmr"
    shutil.copytree(FIXTURE, folder)
    cfg = {**json.loads((folder / "config.json").read_text()), **(config or {})}
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in drop}))
    return folder


@pytest.mark.parametrize(
    ("config", "drop"),
    [
        ({}, ()),
        ({"architectures": ["XLMRobertaForMaskedLM"]}, ()),
        ({"architectures": ["XLMRobertaModel"]}, ("model_type",)),  # the class alone names it
    ],
)
def test_an_xlm_roberta_folder_is_read(tmp_path: Path, config: dict, drop: tuple[str, ...]) -> None:
    model = read_st_folder(_folder(tmp_path, config, drop))
    assert (model.architecture, model.tokenizer_model, model.lowercase) == ("xlm-roberta", "Unigram", False)
    assert (model.pooling, model.normalize, model.max_seq_length, model.task) == ("mean", True, 256, "embed")
    assert model.vocab[:4] == ["<s>", "<pad>", "</s>", "<unk>"]


def test_roberta_is_read_as_its_own_architecture(tmp_path: Path) -> None:
    model = read_st_folder(_folder(tmp_path, {"model_type": "roberta", "architectures": ["RobertaModel"]}))
    assert model.architecture == "roberta"


def test_its_context_is_the_positions_after_the_padding_index(tmp_path: Path) -> None:
    """Position ids start at padding_idx + 1, so 514 position rows hold 512 tokens (XLM-R's published length)."""
    folder = _folder(tmp_path)
    (folder / "sentence_bert_config.json").unlink()
    assert read_st_folder(folder).max_seq_length == 514 - 2
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 8192}')
    assert read_st_folder(folder).max_seq_length == 512  # asked for more than the positions allow
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "pad_token_id": 0}))  # fmt: skip
    assert read_st_folder(folder).max_seq_length == 514 - 1


def test_an_xlm_roberta_cross_encoder_is_refused_by_name(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"architectures": ["XLMRobertaForSequenceClassification"], "id2label": {"0": "L"}})
    (folder / "modules.json").unlink()
    with pytest.raises(InvalidModelFile, match="xlm-roberta cross-encoder; cortex reranks with BERT cross-encoders"):
        read_st_folder(folder)


@pytest.mark.parametrize("engine_options", [{}, {"outtype": "f16"}])
def test_llama_cpp_refuses_it_and_onnxruntime_takes_it(tmp_path: Path, engine_options: dict) -> None:
    source = Source(folder=read_st_folder(_folder(tmp_path)))
    assert choose(None, source, ImportOptions()).name == "onnxruntime"
    with pytest.raises(InvalidRequest, match="writes BERT models only, and this is xlm-roberta") as refused:
        choose("llama-cpp" if not engine_options else None, source, ImportOptions(engine_options=engine_options))
    assert refused.value.param == "engine"


def test_position_ids_follow_the_padding_as_transformers_numbers_them(tmp_path: Path) -> None:
    """transformers numbers the non-pad tokens of each row from padding_idx + 1 and gives pads padding_idx:
    a right-padded row's vectors equal those of the same row alone, and a row's vectors depend on where its
    tokens sit (so the positions are really used)."""
    model = read_st_folder(FIXTURE)
    graph = tmp_path / "m.onnx"
    GRAPH_BUILDERS[model.architecture](model, graph, None)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    tok.no_padding()
    a, b = (tok.encode(t).ids for t in ("hello world", "a longer text than the first one, with more tokens"))

    def run(rows: list[list[int]]) -> np.ndarray:
        ids = np.array(rows, dtype=np.int64)
        return session.run(None, {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)})[0]

    padded = run([a + [1] * (len(b) - len(a)), b])
    np.testing.assert_allclose(padded, np.concatenate([run([a]), run([b])]), atol=1e-5)
    swapped = run([[a[0], a[2], a[1], *a[3:]]])  # the same tokens at other positions
    assert float(np.abs(swapped - run([a])).max()) > 1e-3


def published_style(folder: Path) -> None:
    """Rewrite `folder`'s tokenizer.json as published XLM-RoBERTa files have it (the charsmap then a collapse of
    repeated spaces; Metaspace alone as pre-tokenizer, in its older form), which transformers 5 does not run as
    written."""
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    collapse = {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
    tok["normalizer"] = {"type": "Sequence", "normalizers": [tok["normalizer"], collapse]}
    tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}
    path.write_text(json.dumps(tok))


def test_a_published_tokenizer_json_is_served_as_transformers_runs_it(tmp_path: Path) -> None:
    from cortex.convert.st_folder import served_tokenizer_json

    folder = _folder(tmp_path)
    published_style(folder)
    rows = json.loads((DATA / "arch" / "xlm-roberta.reference.json").read_text())["short"]
    as_written = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert as_written.encode(" ").ids == [0, 4, 2]  # `tokenizers` alone: a `▁` token sentence-transformers lacks
    served = Tokenizer.from_str(served_tokenizer_json(folder))
    for row in rows:
        assert served.encode(row["text"]).ids == row["tokens"], row["text"]
    assert json.loads(served_tokenizer_json(FIXTURE)) == json.loads((FIXTURE / "tokenizer.json").read_text())
    no_prefix = folder / "tokenizer_config.json"
    no_prefix.write_text(json.dumps({**json.loads(no_prefix.read_text()), "add_prefix_space": False}))
    assert json.loads(served_tokenizer_json(folder))["pre_tokenizer"]["pretokenizers"][1]["prepend_scheme"] == "never"
