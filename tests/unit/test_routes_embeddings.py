"""`POST /v1/embeddings` in process, through the guard, with a stub engine (what a vector holds is the real
engines' business, in tests/e2e): the request's validation and every error's shape, the encodings and
`dimensions`, the context rule and `truncate`, the per-request limits, and engine failure and overload."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from cortex.config import Settings
from tests.unit.support import BOS, EOS, StubEngine, StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

M = "m:1"
GOOD = {"model": M, "input": "still serving"}


@pytest.fixture
def model(models_dir: Path) -> str:
    """A stored model: 8 dimensions, a context of 16 tokens, the stub's vectors served as it gives them."""
    write_model(models_dir, M, n_embd=8, ctx_len=16, normalize=False)
    return M


def _rows(body: dict) -> np.ndarray:
    rows = []
    for d in body["data"]:
        value = d["embedding"]
        rows.append(np.frombuffer(base64.b64decode(value), "<f4") if isinstance(value, str) else value)
    return np.array(rows, dtype=np.float32)


async def _embed(api: httpx.AsyncClient, **body: object) -> dict:
    r = await api.post("/v1/embeddings", json={"model": M, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def test_float_and_base64_carry_the_engines_vectors_in_order(
    api: httpx.AsyncClient, model: str, engines: StubEngines
) -> None:
    texts = ["hello world", "a", "three words here"]
    plain = await _embed(api, input=texts)
    packed = await _embed(api, input=texts, encoding_format="base64")
    engine = engines[0]
    expected = np.array([engine.vector(engine.tokenize(t)) for t in texts], dtype=np.float32)
    for body in (plain, packed):
        np.testing.assert_array_equal(_rows(body), expected)
        assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["model"] == M
        assert body["usage"] == {"prompt_tokens": 4 + 3 + 5, "total_tokens": 12}
    assert all(isinstance(d["embedding"], str) for d in packed["data"])
    assert (await _embed(api, input="a"))["data"][0]["embedding"] == plain["data"][1]["embedding"]  # one string


async def test_a_bare_name_resolves_and_is_echoed_as_given(api: httpx.AsyncClient, model: str) -> None:
    r = await api.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert r.status_code == 200 and r.json()["model"] == "m"


async def test_token_ids_are_used_as_given(api: httpx.AsyncClient, model: str, engines: StubEngines) -> None:
    body = await _embed(api, input=[[5, 6, 7], [8]])
    np.testing.assert_array_equal(_rows(body)[:, :2], [[5, 3], [8, 1]])
    assert body["usage"]["prompt_tokens"] == 4
    assert engines[0].batches == [[[5, 6, 7], [8]]]
    assert _rows(await _embed(api, input=[9, 10]))[0, :2].tolist() == [9, 2]  # one list of ids: one input


async def test_dimensions_cut_and_renormalise(api: httpx.AsyncClient, model: str) -> None:
    full = _rows(await _embed(api, input=["a b c"]))[0]
    cut = _rows(await _embed(api, input=["a b c"], dimensions=3, normalize=True))[0]
    np.testing.assert_allclose(cut, full[:3] / np.linalg.norm(full[:3]), rtol=1e-6)
    assert len(_rows(await _embed(api, input="x", dimensions=8))[0]) == 8


async def test_an_input_over_the_context_is_a_400_in_openai_words_or_truncated(
    api: httpx.AsyncClient, model: str
) -> None:
    exact = " ".join(["w"] * 14)  # BOS + 14 + EOS = 16 tokens: the context
    assert (await _embed(api, input=exact))["usage"]["prompt_tokens"] == 16
    r = await api.post("/v1/embeddings", json={"model": M, "input": ["ok", exact + " w"]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "input", "invalid_request_error")
    assert err["message"].startswith(
        "This model's maximum context length is 16 tokens, however you requested 17 tokens (input at index 1)"
    )
    ids = [[BOS, *range(100, 120), EOS]]
    assert (await api.post("/v1/embeddings", json={"model": M, "input": ids})).status_code == 400
    body = await _embed(api, input=exact + " w w w", truncate=True)
    assert body["usage"]["prompt_tokens"] == 16
    assert _rows(body)[0, :2].tolist() == [BOS, 16]
    body = await _embed(api, input=ids, truncate=True)  # token ids are cut as given
    assert body["usage"]["prompt_tokens"] == 16


async def test_auto_truncate_cuts_for_clients_that_cannot_ask_and_a_request_can_still_refuse(
    settings: Callable[..., Settings], engines: StubEngines, model: str
) -> None:
    """Issue 15 (server-side options): plain OpenAI clients cannot send `truncate`; `auto_truncate` lets the
    server cut for them, and a request's own `truncate: false` keeps the 400."""
    long = " ".join(["w"] * 20)
    async with serve(settings(auto_truncate=True)) as client:
        body = await _embed(client, input=long)
        assert body["usage"]["prompt_tokens"] == 16
        r = await client.post("/v1/embeddings", json={"model": M, "input": long, "truncate": False})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.fixture
async def limited(
    settings: Callable[..., Settings], engines: StubEngines, model: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings(max_inputs=4, max_tokens_per_request=20, max_queue_inputs=3)) as client:
        yield client


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (["a"] * 5, "Too many inputs: 5 given, at most 4"),
        ([[5] * 8, [6] * 8, [7] * 8], "24 tokens in all, over the limit of 20 per request"),
        (["a", "b", "c", "d"], "max_queue_inputs"),  # more than the whole queue holds: retrying cannot help
    ],
)
async def test_per_request_limits_are_400s_naming_them(limited: httpx.AsyncClient, inputs: list, words: str) -> None:
    r = await limited.post("/v1/embeddings", json={"model": M, "input": inputs})
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "input"
    assert (await limited.post("/v1/embeddings", json={"model": M, "input": ["a"] * 3})).status_code == 200


# (case id, body, status, param, code, words the message must hold)
CASES = [
    ("empty string", {"model": M, "input": ""}, 400, "input", None, "empty"),
    ("empty array", {"model": M, "input": []}, 400, "input", None, "empty array"),
    ("empty string in array", {"model": M, "input": ["a", ""]}, 400, "input", None, "index 1"),
    ("empty token array", {"model": M, "input": [[2], []]}, 400, "input", None, "index 1"),
    ("too many inputs", {"model": M, "input": ["x"] * 2049}, 400, "input", None, "2048"),
    ("token id beyond vocab", {"model": M, "input": [[2, 5], [2, 1000]]}, 400, "input", None, "index 1"),
    ("negative token id", {"model": M, "input": [2, -1]}, 400, "input", None, "-1"),
    ("float token id", {"model": M, "input": [2, 1.5]}, 400, "input", None, "input"),
    ("bool token id", {"model": M, "input": [True, 2]}, 400, "input", None, "input"),
    ("mixed array", {"model": M, "input": ["a", 2]}, 400, "input", None, "input"),
    ("input is a number", {"model": M, "input": 42}, 400, "input", None, "input"),
    ("input is an object", {"model": M, "input": {"a": 1}}, 400, "input", None, "input"),
    ("input null", {"model": M, "input": None}, 400, "input", None, "input"),
    ("missing input", {"model": M}, 400, "input", None, "input"),
    ("missing model", {"input": "x"}, 400, "model", None, "model"),
    ("model is a number", {"model": 7, "input": "x"}, 400, "model", None, "model"),
    ("unknown model", {"model": "nope:1b", "input": "x"}, 404, "model", "model_not_found", "nope:1b"),
    ("model escaping the store", {"model": "../../etc/passwd", "input": "x"}, 400, "model", None, "Invalid model id"),
    ("model empty", {"model": "", "input": "x"}, 400, "model", None, "model id"),
    ("model NUL", {"model": "a\u0000b", "input": "x"}, 400, "model", None, "Invalid model id"),
    ("unknown encoding_format", {**GOOD, "encoding_format": "int8"}, 400, "encoding_format", None, "base64"),
    ("dimensions zero", {**GOOD, "dimensions": 0}, 400, "dimensions", None, "positive"),
    ("dimensions negative", {**GOOD, "dimensions": -3}, 400, "dimensions", None, "positive"),
    ("dimensions a string", {**GOOD, "dimensions": "4"}, 400, "dimensions", None, "integer"),
    ("dimensions too large", {**GOOD, "dimensions": 9}, 400, "dimensions", None, "8 dimensions"),
    ("truncate a string", {**GOOD, "truncate": "yes"}, 400, "truncate", None, "true or false"),
    ("user not a string", {**GOOD, "user": 5}, 400, "user", None, "user"),
    ("body not JSON", b"{not json", 400, None, None, "JSON"),
    ("empty body", b"", 400, None, None, "JSON"),
    ("body a JSON array", b"[1, 2]", 400, None, None, "object"),
    ("invalid UTF-8", b'{"model": "m:1", "input": "\xff\xfe"}', 400, None, None, "JSON"),
    ("trailing garbage", b'{"model": "m:1", "input": "a"} trailing', 400, None, None, "JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_every_bad_request_has_openai_shape_and_the_next_one_works(
    api: httpx.AsyncClient, model: str, body: dict | bytes, status: int, param: str | None, code: str | None, words: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await api.post("/v1/embeddings", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert words in err["message"] and "Traceback" not in err["message"]
    assert r.headers["x-request-id"]
    assert (await api.post("/v1/embeddings", json=GOOD)).status_code == 200


async def test_a_failed_batch_is_a_500_engine_error_and_the_model_serves_on(
    api: httpx.AsyncClient, model: str, engines: StubEngines
) -> None:
    engines.make = lambda record: StubEngine(fail_on=666, n_embd=record.n_embd, n_ctx=record.ctx_len)
    r = await api.post("/v1/embeddings", json={"model": M, "input": [[666, 1]]})
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("server_error", "engine_error") and "boom" not in err["message"]
    assert (await _embed(api, input=[[5, 1]]))["usage"]["prompt_tokens"] == 2


async def test_a_full_queue_is_a_503_with_retry_after(limited: httpx.AsyncClient, engines: StubEngines) -> None:
    assert (await limited.post("/v1/models/start", json={"model": M})).status_code == 200
    engine = engines[0]
    engine.gate.clear()  # the engine is busy
    first = asyncio.ensure_future(limited.post("/v1/embeddings", json={"model": M, "input": [[5]]}))
    assert await asyncio.to_thread(engine.entered.wait, 10)  # the first batch is inside the engine
    queued = asyncio.ensure_future(limited.post("/v1/embeddings", json={"model": M, "input": [[6], [7], [8]]}))
    await asyncio.sleep(0.2)  # in process, no I/O: it is queued long before this (3 inputs: the queue is full)
    r = await limited.post("/v1/embeddings", json={"model": M, "input": [[9]]})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "server_overloaded" and r.headers["retry-after"] == "1"
    engine.gate.set()
    assert [(await f).status_code for f in (first, queued)] == [200, 200]


async def test_the_access_log_names_the_model_inputs_and_tokens_but_no_text(
    api: httpx.AsyncClient, model: str, tmp_path: Path
) -> None:
    secret = "my very private sentence"
    r = await api.post("/v1/embeddings", json={"model": M, "input": [secret, "b"]})
    log = (tmp_path / "data" / "logs" / "access.jsonl").read_text()
    entry = next(e for e in map(json.loads, log.splitlines()) if e["id"] == r.headers["x-request-id"])
    assert (entry["route"], entry["status"], entry["model"], entry["inputs"], entry["tokens"]) == (
        "/v1/embeddings",
        200,
        M,
        2,
        6 + 3,
    )
    assert secret not in log


def test_the_stub_tokenizer_brackets_words_with_bos_and_eos() -> None:
    engine = StubEngine()
    tokens = engine.tokenize("two words")
    assert tokens[0] == BOS and tokens[-1] == EOS and len(tokens) == 4
    assert engine.truncate(tokens, 3) == [BOS, tokens[1], EOS]
