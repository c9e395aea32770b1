"""`POST /tokenize` (llama-server's and text-embeddings-inference's shapes) and `POST /detokenize` in process,
with a stub engine (one token per word, BOS/EOS around): the shapes, the counts /v1/embeddings' usage gives,
the model a request may leave out, and every malformed request as a 400 naming its parameter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cortex.config import Settings
from tests.unit.support import BOS, EOS, StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

M = "m:1"


@pytest.fixture
def model(models_dir: Path) -> str:
    write_model(models_dir, M, n_embd=8, ctx_len=16)
    return M


async def _ok(api: httpx.AsyncClient, path: str, **body: object) -> object:
    r = await api.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def _usage(api: httpx.AsyncClient, text: str | list[str], **extra: object) -> int:
    body = await _ok(api, "/v1/embeddings", model=M, input=text, **extra)
    return body["usage"]["prompt_tokens"]


async def test_llama_server_shape_ids_and_pieces(api: httpx.AsyncClient, model: str, engines: StubEngines) -> None:
    plain = await _ok(api, "/tokenize", model=M, content="hello big world")
    engine = engines[0]
    words = [engine.word_id(w) for w in ("hello", "big", "world")]
    assert plain == {"tokens": words}  # llama-server's default: add_special false
    special = await _ok(api, "/tokenize", model=M, content="hello big world", add_special=True)
    assert special == {"tokens": [BOS, *words, EOS]}
    assert len(special["tokens"]) == await _usage(api, "hello big world")  # what usage counts
    pieces = await _ok(api, "/tokenize", model=M, content="hello big world", add_special=True, with_pieces=True)
    assert pieces == {
        "tokens": [{"id": BOS, "piece": "<s>"}]
        + [{"id": i, "piece": w} for i, w in zip(words, ("hello", "big", "world"), strict=True)]
        + [{"id": EOS, "piece": "</s>"}]
    }


async def test_tei_shape_has_spans_in_bytes_and_counts_as_usage(
    api: httpx.AsyncClient, model: str, engines: StubEngines
) -> None:
    texts = ["héllo wörld", "one"]
    body = await _ok(api, "/tokenize", model=M, inputs=texts)
    engine = engines[0]
    assert body == [
        [
            {"id": BOS, "text": "<s>", "special": True, "start": None, "stop": None},
            {"id": engine.word_id("héllo"), "text": "héllo", "special": False, "start": 0, "stop": 6},
            {"id": engine.word_id("wörld"), "text": "wörld", "special": False, "start": 7, "stop": 13},
            {"id": EOS, "text": "</s>", "special": True, "start": None, "stop": None},
        ],
        [
            {"id": BOS, "text": "<s>", "special": True, "start": None, "stop": None},
            {"id": engine.word_id("one"), "text": "one", "special": False, "start": 0, "stop": 3},
            {"id": EOS, "text": "</s>", "special": True, "start": None, "stop": None},
        ],
    ]
    assert sum(len(t) for t in body) == await _usage(api, texts)
    single = await _ok(api, "/tokenize", model=M, inputs="one", add_special_tokens=False)
    assert single == [[{"id": engine.word_id("one"), "text": "one", "special": False, "start": 0, "stop": 3}]]


async def test_detokenize_gives_the_text_back(api: httpx.AsyncClient, model: str) -> None:
    ids = (await _ok(api, "/tokenize", model=M, content="back again", add_special=True))["tokens"]
    assert await _ok(api, "/detokenize", model=M, tokens=ids) == {"content": "<s> back again </s>"}
    assert await _ok(api, "/detokenize", model=M, tokens=[]) == {"content": ""}


async def test_the_model_may_be_left_out_when_only_one_is_meant(
    settings: Callable[..., Settings], models_dir: Path, engines: StubEngines
) -> None:
    async with serve(settings()) as api:
        r = await api.post("/tokenize", json={"content": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert "no model is stored" in r.json()["error"]["message"]
        write_model(models_dir, "a:1")
        assert (await api.post("/tokenize", json={"content": "x y"})).json()["tokens"] == [
            engines[0].word_id("x"),
            engines[0].word_id("y"),
        ]  # the only stored model, loaded on demand
        assert (await api.post("/detokenize", json={"tokens": [BOS]})).json() == {"content": "<s>"}
        write_model(models_dir, "b:1")  # a:1 is loaded, but no longer the only model: what it means must not
        r = await api.post("/tokenize", json={"inputs": "x"})  # depend on what happens to be loaded
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert "2 models are stored (a:1, b:1)" in r.json()["error"]["message"]
        assert len(engines) == 1
        assert (await api.post("/tokenize", json={"inputs": "x", "model": "b:1"})).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/tokenize", {"model": M}, "content", "provide a content"),
        ("/tokenize", {"model": M, "content": 3}, "content", "must be a string"),
        ("/tokenize", {"model": M, "content": "x", "add_special": "yes"}, "add_special", "true or false"),
        ("/tokenize", {"model": M, "content": "x", "with_pieces": 1}, "with_pieces", "true or false"),
        ("/tokenize", {"model": 5, "content": "x"}, "model", "must be a string"),
        ("/tokenize", {"model": M, "inputs": ["a", 2]}, "inputs", "array of strings"),
        ("/tokenize", {"model": M, "inputs": "a", "add_special_tokens": None}, "add_special_tokens", "true or false"),
        ("/tokenize", {"model": M, "inputs": ["a"] * 5}, "inputs", "at most 4"),
        ("/tokenize", {"model": M, "inputs": []}, "inputs", "must not be an empty array"),
        ("/tokenize", {"model": M, "content": "a b c d e f g h i j"}, "content", "over the limit of 8"),
        ("/tokenize", {"model": M, "inputs": "a", "prompt_name": "query"}, "prompt_name", "has none"),
        ("/detokenize", {"model": M}, "tokens", "provide a tokens"),
        ("/detokenize", {"model": M, "tokens": "1 2"}, "tokens", "array of integers"),
        ("/detokenize", {"model": M, "tokens": [1, 1000]}, "tokens", "[0, 1000)"),
        ("/detokenize", {"model": M, "tokens": [-1]}, "tokens", "[0, 1000)"),
        ("/detokenize", {"model": M, "tokens": [1] * 9}, "tokens", "over the limit of 8"),
    ],
)
async def test_a_malformed_request_is_a_400_naming_its_parameter(
    settings: Callable[..., Settings], engines: StubEngines, model: str, path: str, body: dict, param: str, words: str
) -> None:
    async with serve(settings(max_inputs=4, max_tokens_per_request=8)) as api:
        r = await api.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


async def test_bodies_that_are_not_objects_and_unknown_models(api: httpx.AsyncClient, model: str) -> None:
    for path in ("/tokenize", "/detokenize"):
        r = await api.post(path, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await api.post(path, json=["content"])
        assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = await api.post("/tokenize", json={"model": "nope:1", "content": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
