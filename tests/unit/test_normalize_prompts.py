"""Per-request `normalize` and `prompt_name` on /v1/embeddings, in process with a stub engine whose vectors
are not unit vectors ([first id, length, 1, ...]): the pipeline, not the engine, normalises; prompts are put
before each text and counted; and a model record's prompts are checked like the rest of it."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from cortex.runtime.embed import finish_vectors
from cortex.store.store import ModelRecord
from tests.unit.support import BOS, EOS, StubEngines, write_model

pytestmark = pytest.mark.anyio

PROMPTS = {"query": "query: ", "passage": "passage: "}


def _rows(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


async def _embed(api: httpx.AsyncClient, **body: object) -> dict:
    r = await api.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_dimensions_are_cut_then_normalised_only_when_normalising() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    cut = finish_vectors(vectors.copy(), normalize=True, dimensions=2)
    np.testing.assert_allclose(cut[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(np.isfinite(cut[1])) and np.all(cut[1] == 0)  # a zero prefix stays zero, no division by 0
    np.testing.assert_array_equal(finish_vectors(vectors.copy(), normalize=False, dimensions=2), vectors[:, :2])
    whole = finish_vectors(vectors.copy(), normalize=True, dimensions=None)
    np.testing.assert_allclose(whole[0], [3 / 13, 4 / 13, 12 / 13], rtol=1e-6)
    assert finish_vectors(vectors, normalize=False, dimensions=3) is vectors


async def test_normalize_defaults_to_the_models_own_and_a_request_may_change_it(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "unit:1", n_embd=4)
    write_model(models_dir, "raw:1", n_embd=4, normalize=False)
    raw = np.array([[BOS, 4, 1, 1]], dtype=np.float32)  # "a b" is [BOS, a, b, EOS]
    unit = raw / np.linalg.norm(raw)
    np.testing.assert_allclose(_rows(await _embed(api, model="unit:1", input="a b")), unit, rtol=1e-6)
    np.testing.assert_array_equal(_rows(await _embed(api, model="raw:1", input="a b")), raw)
    np.testing.assert_array_equal(_rows(await _embed(api, model="unit:1", input="a b", normalize=False)), raw)
    np.testing.assert_allclose(_rows(await _embed(api, model="raw:1", input="a b", normalize=True)), unit, rtol=1e-6)
    packed = await _embed(api, model="unit:1", input="a b", normalize=False, encoding_format="base64")
    assert np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4").tolist() == raw[0].tolist()
    cut = await _embed(api, model="unit:1", input="a b", normalize=False, dimensions=2)
    assert _rows(cut).tolist() == [[BOS, 4]]  # only cut: a pooled vector is not renormalised
    r = await api.post("/v1/embeddings", json={"model": "unit:1", "input": "a", "normalize": "no"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "normalize"


async def test_a_prompt_is_put_before_each_text_and_counted(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "p:1", n_embd=4, normalize=False, prompts=PROMPTS)
    asked = await _embed(api, model="p:1", input=["a b", "c"], prompt_name="query")
    spelled = await _embed(api, model="p:1", input=["query: a b", "query: c"])
    np.testing.assert_array_equal(_rows(asked), _rows(spelled))
    assert asked["usage"] == spelled["usage"] == {"prompt_tokens": 5 + 4, "total_tokens": 9}
    engine = engines[0]
    assert engine.batches[0][0] == [BOS, engine.word_id("query:"), engine.word_id("a"), engine.word_id("b"), EOS]
    plain = await _embed(api, model="p:1", input="a b")  # no default prompt: the text as it is
    assert plain["usage"]["prompt_tokens"] == 4
    tei = (await api.post("/tokenize", json={"model": "p:1", "inputs": "a b", "prompt_name": "passage"})).json()
    assert [t["text"] for t in tei[0]] == ["<s>", "passage:", "a", "b", "</s>"]
    assert [(t["start"], t["stop"]) for t in tei[0][1:4]] == [(0, 8), (9, 10), (11, 12)]  # in "passage: a b"


async def test_the_default_prompt_applies_when_none_is_named(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "d:1", n_embd=4, normalize=False, prompts=PROMPTS, default_prompt_name="passage")
    by_default = await _embed(api, model="d:1", input="a")
    assert by_default["usage"]["prompt_tokens"] == 4  # [BOS, passage:, a, EOS]
    named = await _embed(api, model="d:1", input="a", prompt_name="passage")
    np.testing.assert_array_equal(_rows(by_default), _rows(named))
    assert engines[0].batches[0] == engines[0].batches[1]
    assert (await _embed(api, model="d:1", input="a", prompt_name="query"))["usage"]["prompt_tokens"] == 4
    ids = await _embed(api, model="d:1", input=[[5, 6]])  # token ids are used as given: no default prompt
    assert ids["usage"]["prompt_tokens"] == 2 and engines[0].batches[-1] == [[5, 6]]
    tei = (await api.post("/tokenize", json={"model": "d:1", "inputs": "a"})).json()
    assert [t["text"] for t in tei[0]] == ["<s>", "passage:", "a", "</s>"]
    llama = (await api.post("/tokenize", json={"model": "d:1", "content": "a"})).json()
    assert llama["tokens"] == [engines[0].word_id("a")]  # llama-server's shape tokenizes the content as it is


async def test_unknown_prompts_and_prompts_with_token_ids_are_400s(api: httpx.AsyncClient, models_dir: Path) -> None:
    write_model(models_dir, "p:1", n_embd=4, prompts=PROMPTS)
    write_model(models_dir, "none:1", n_embd=4)
    r = await api.post("/v1/embeddings", json={"model": "p:1", "input": "a", "prompt_name": "doc"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "prompt_name"
    assert "'query', 'passage'" in error["message"] and "'doc'" in error["message"]
    r = await api.post("/v1/embeddings", json={"model": "none:1", "input": "a", "prompt_name": "query"})
    assert r.status_code == 400 and "it has none" in r.json()["error"]["message"]
    r = await api.post("/v1/embeddings", json={"model": "p:1", "input": [1, 2], "prompt_name": "query"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_name"
    r = await api.post("/v1/embeddings", json={"model": "p:1", "input": "a", "prompt_name": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_name"


def test_a_record_whose_default_prompt_is_not_among_its_prompts_is_invalid() -> None:
    fields = {"id": "m:1", "name": "m", "files": ["model.gguf"], "architecture": "bert", "pooling": "mean",
              "ctx_len": 8, "n_ctx_train": 8, "n_embd": 4, "size": 1, "created": 0}  # fmt: skip
    assert ModelRecord(**fields, prompts=PROMPTS, default_prompt_name="query").default_prompt_name == "query"
    assert ModelRecord(**fields).prompts == {}  # a model.yml written before prompts existed still reads
    with pytest.raises(ValidationError, match="not one of its prompts"):
        ModelRecord(**fields, prompts=PROMPTS, default_prompt_name="doc")
