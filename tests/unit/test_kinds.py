"""The engine kinds table: choosing a kind for a source and its options, and the advice when none fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.engine.kinds import ImportOptions, Source, choose
from cortex.errors import InvalidRequest
from tests import DATA

GGUF = Source(file=Path("model.gguf"))


def _folder(task: str = "embed", **fields: object) -> Source:
    from types import SimpleNamespace

    described = {"task": task, "architecture": "bert", "tokenizer_model": "WordPiece", "lowercase": True,
                 "pooling": "mean", "prompts": {}, "include_prompt": True, "folder": DATA / "arch" / "bert-cased",
                 **fields}  # fmt: skip
    return Source(folder=SimpleNamespace(**described))  # type: ignore[arg-type]  # choose() asks only what it is


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"architecture": "mpnet"}, "writes BERT models only"),
        ({"tokenizer_model": "Unigram"}, "this folder's is Unigram"),
        ({"lowercase": False}, "this vocabulary is cased"),
        ({"prompts": {"query": "query: "}, "include_prompt": False}, "include_prompt: false"),
    ],
)
def test_folders_llama_cpp_cannot_serve_go_to_onnxruntime_and_are_refused_by_name(fields: dict, why: str) -> None:
    assert choose(None, _folder(**fields), ImportOptions()).name == "onnxruntime"
    for engine, options in (("llama-cpp", {}), (None, {"outtype": "q8_0"})):  # named, or by its option
        with pytest.raises(InvalidRequest, match=why) as refused:
            choose(engine, _folder(**fields), ImportOptions(engine_options=options))
        assert refused.value.param == "engine" and "onnxruntime engine" in refused.value.message


def test_the_default_kind_follows_the_source_and_the_options() -> None:
    assert choose(None, GGUF, ImportOptions()).name == "llama-cpp"
    assert choose(None, _folder(), ImportOptions()).name == "onnxruntime"
    assert choose(None, _folder(), ImportOptions(engine_options={"outtype": "q8_0"})).name == "llama-cpp"
    assert choose(None, _folder(), ImportOptions(engine_options={"quantize": "int8"})).name == "onnxruntime"


@pytest.mark.parametrize(("option", "value"), [("quantize", "int8"), ("outtype", "f16")])
def test_conversion_options_on_a_gguf_get_the_same_advice(option: str, value: str) -> None:
    """Issue 14: `--quantize` on a GGUF pointed at onnxruntime (which imports no GGUF), while `--outtype` on
    a GGUF said folders only: two answers to one mistake."""
    with pytest.raises(InvalidRequest) as caught:
        choose(None, GGUF, ImportOptions(engine_options={option: value}))
    assert caught.value.param == option
    assert "A GGUF file is served as it is" in caught.value.message and "folder" in caught.value.message


def test_wrong_names_and_values_are_400s_that_list_what_exists() -> None:
    for engine, opts, words in (
        ("vllm", ImportOptions(), "use one of onnxruntime, llama-cpp"),
        ("onnxruntime", ImportOptions(engine_options={"outtype": "f16"}), "option of the llama-cpp engine"),
        (None, ImportOptions(engine_options={"outtype": "f8"}), "use one of f32, f16, q8_0"),
        (None, ImportOptions(engine_options={"colour": "red"}), "engine options: "),
        (None, ImportOptions(pooling="median"), "use one of mean, cls, last, max, mean_sqrt_len, weightedmean"),
    ):
        with pytest.raises(InvalidRequest, match=words):
            choose(engine, _folder(), opts)
    with pytest.raises(InvalidRequest, match="does not import GGUF files"):
        choose("onnxruntime", GGUF, ImportOptions())


def test_a_cross_encoder_goes_to_a_kind_that_serves_rerank() -> None:
    assert choose(None, _folder("rerank"), ImportOptions()).name == "onnxruntime"
    for engine, options in (("llama-cpp", {}), (None, {"outtype": "f16"})):  # named, or by its option
        with pytest.raises(InvalidRequest, match=r"llama-cpp engine cannot.*cross-encoder.*onnxruntime") as caught:
            choose(engine, _folder("rerank"), ImportOptions(engine_options=options))
        assert caught.value.param == "engine"


def test_a_folder_no_engine_can_serve_gets_one_answer_not_two(tmp_path: Path) -> None:
    """A cased vocabulary with only vocab.txt: llama.cpp lower-cases, ONNX Runtime reads tokenizer.json only.
    Each refusal says why, and neither sends the user to the other engine."""
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    source = _folder(lowercase=False, folder=tmp_path)
    for engine in (None, "onnxruntime", "llama-cpp"):
        with pytest.raises(InvalidRequest) as refused:
            choose(engine, source, ImportOptions())
        assert "import it with" not in refused.value.message
    with pytest.raises(InvalidRequest, match=r"only vocab\.txt"):
        choose("onnxruntime", source, ImportOptions())
