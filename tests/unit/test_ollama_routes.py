"""Ollama's API (cortex.api.routes.ollama) in process, through the guard, with a stub engine: the shapes its
clients read, Ollama's defaults (truncate on /api/embed, an empty input that only loads), `NAME:latest`,
keep_alive, and Ollama's error shape `{"error": "..."}` on every /api/* answer, the guard's refusals too."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from cortex import __version__
from cortex.api.guard import Guard
from tests.unit.support import StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

M = "m:1"


@pytest.fixture
def model(models_dir: Path) -> str:
    """A stored model: 8 dimensions, a context of 16 tokens."""
    write_model(models_dir, M, n_embd=8, ctx_len=16, architecture="bert")
    return M


def _ollama_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    return body["error"]


async def test_embed_answers_ollamas_fields_with_the_engines_vectors_normalised(
    api: httpx.AsyncClient, model: str, engines: StubEngines
) -> None:
    texts = ["hello world", "a"]
    r = await api.post("/api/embed", json={"model": M, "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    engine = engines[0]
    pooled = np.array([engine.vector(engine.tokenize(t)) for t in texts])  # the stub model says normalize: false
    np.testing.assert_allclose(  # Ollama's /api/embed always answers unit vectors
        np.array(body["embeddings"], dtype=np.float32),
        pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
        rtol=1e-6,
    )
    assert body["model"] == M and body["prompt_eval_count"] == 4 + 3
    assert body["total_duration"] >= body["load_duration"] > 0
    one = (await api.post("/api/embed", json={"model": M, "input": "a"})).json()
    assert one["embeddings"] == [body["embeddings"][1]]


async def test_embed_truncates_by_default_and_refuses_with_truncate_false(api: httpx.AsyncClient, model: str) -> None:
    long = " ".join(f"w{i}" for i in range(40))  # 42 tokens, over the context of 16
    r = await api.post("/api/embed", json={"model": M, "input": long})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 16
    message = _ollama_error(await api.post("/api/embed", json={"model": M, "input": long, "truncate": False}), 400)
    assert "maximum context length is 16" in message


async def test_an_empty_input_only_loads_the_model(api: httpx.AsyncClient, model: str, engines: StubEngines) -> None:
    for body in ({"model": M}, {"model": M, "input": ""}, {"model": M, "input": []}):
        r = await api.post("/api/embed", json=body)
        assert r.status_code == 200 and r.json()["embeddings"] == [] and r.json()["prompt_eval_count"] == 0
    r = await api.post("/api/embeddings", json={"model": M, "prompt": ""})
    assert r.status_code == 200 and r.json() == {"embedding": []}
    assert len(engines) == 1 and engines[0].batches == []  # loaded, nothing embedded


async def test_embed_dimensions_and_options(api: httpx.AsyncClient, model: str) -> None:
    body = {"model": M, "input": "x y", "dimensions": 4, "options": {"temperature": 0.1, "num_ctx": 8}}
    row = (await api.post("/api/embed", json=body)).json()["embeddings"][0]
    assert len(row) == 4 and math.isclose(float(np.linalg.norm(row)), 1.0, rel_tol=1e-5)
    assert "dimensions" in _ollama_error(await api.post("/api/embed", json={**body, "dimensions": 9}), 400)


async def test_legacy_embeddings_route_embeds_one_prompt_and_refuses_an_over_long_one(
    api: httpx.AsyncClient, model: str, engines: StubEngines
) -> None:
    r = await api.post("/api/embeddings", json={"model": M, "prompt": "hello world"})
    assert r.status_code == 200 and set(r.json()) == {"embedding"}
    pooled = np.array(engines[0].vector(engines[0].tokenize("hello world")))
    np.testing.assert_allclose(r.json()["embedding"], pooled / np.linalg.norm(pooled), rtol=1e-6)  # normalize: true
    long = " ".join(f"w{i}" for i in range(40))
    assert "context length" in _ollama_error(await api.post("/api/embeddings", json={"model": M, "prompt": long}), 400)


async def test_name_latest_names_what_the_bare_name_does(api: httpx.AsyncClient, models_dir: Path) -> None:
    write_model(models_dir, "solo:v2", n_embd=8)
    write_model(models_dir, "exact:latest", n_embd=8)
    write_model(models_dir, "exact", n_embd=8)
    r = await api.post("/api/embed", json={"model": "solo:latest", "input": "a"})
    assert r.status_code == 200 and r.json()["model"] == "solo:latest"
    show = (await api.post("/api/show", json={"model": "exact:latest"})).json()
    assert show["model_info"]["general.name"] == "stub exact:latest"  # an exact id wins over the rule
    assert "does not exist" in _ollama_error(await api.post("/api/show", json={"model": "other:latest"}), 404)


async def test_tags_ps_show_and_version(api: httpx.AsyncClient, model: str) -> None:
    tags = (await api.get("/api/tags")).json()["models"]
    assert [(t["name"], t["model"]) for t in tags] == [(M, M)]
    entry = tags[0]
    assert entry["size"] == 64 and len(entry["digest"]) == 64 and entry["modified_at"].endswith("Z")
    assert entry["details"]["format"] == "gguf" and entry["details"]["family"] == "bert"
    assert (await api.get("/api/ps")).json() == {"models": []}
    await api.post("/api/embed", json={"model": M, "input": "a", "keep_alive": "5m"})
    running = (await api.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == [M] and running[0]["size_vram"] == 0
    assert running[0]["digest"] == entry["digest"] and running[0]["context_length"] == 16
    show = (await api.post("/api/show", json={"name": M})).json()  # `name`: the older field
    assert show["capabilities"] == ["embedding"] and show["details"] == entry["details"]
    assert show["model_info"]["bert.embedding_length"] == 8 and show["model_info"]["bert.context_length"] == 32
    assert (await api.get("/api/version")).json() == {"version": __version__}
    assert (await api.head("/api/version")).status_code == (await api.head("/api/tags")).status_code == 200


async def test_keep_alive_sets_when_the_model_unloads(api: httpx.AsyncClient, model: str) -> None:
    await api.post("/api/embed", json={"model": M, "input": "a", "keep_alive": -1})
    forever = (await api.get("/api/ps")).json()["models"][0]["expires_at"]
    assert int(forever[:4]) > 2100  # Ollama's CLI says "Forever" for dates this far
    assert (await api.get(f"/v1/models/{M}")).json()["expires_at"] is None
    await api.post("/api/embed", json={"model": M, "input": "a", "keep_alive": "1h"})
    assert (await api.get("/api/ps")).json()["models"][0]["expires_at"] < forever
    await api.post("/api/embed", json={"model": M, "input": "a", "keep_alive": 1e300})  # was a 500 on /api/ps
    ps = await api.get("/api/ps")
    assert ps.status_code == 200 and int(ps.json()["models"][0]["expires_at"][:4]) > 2100
    message = _ollama_error(await api.post("/api/embed", json={"model": M, "input": "a", "keep_alive": "soon"}), 400)
    assert "keep_alive" in message and "duration" in message


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/api/embed", {"input": "a"}, 400, "'model'"),
        ("POST", "/api/embed", {"model": "nope:1", "input": "a"}, 404, "does not exist"),
        ("POST", "/api/embed", {"model": M, "input": 3}, 400, "'input'"),
        ("POST", "/api/embed", {"model": M, "input": ["a", ""]}, 400, "empty"),
        ("POST", "/api/embed", {"model": M, "input": "a", "truncate": "yes"}, 400, "'truncate'"),
        ("POST", "/api/embeddings", {"model": M, "prompt": ["a"]}, 400, "'prompt'"),
        ("POST", "/api/show", {}, 400, "model is required"),
        ("POST", "/api/pull", {}, 400, "model is required"),
        ("GET", "/api/nothing", None, 404, "Invalid URL"),
        ("GET", "/api/embed", None, 405, "not allowed"),
    ],
)
async def test_errors_are_in_ollamas_shape(
    api: httpx.AsyncClient, model: str, method: str, path: str, body: dict | None, status: int, words: str
) -> None:
    assert words in _ollama_error(await api.request(method, path, json=body), status)


async def test_a_body_that_is_not_json_is_a_400_in_ollamas_shape(api: httpx.AsyncClient, model: str) -> None:
    r = await api.post("/api/embed", content=b"{nope", headers={"content-type": "application/json"})
    assert "JSON" in _ollama_error(r, 400)
    # the same body elsewhere keeps OpenAI's shape
    r = await api.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_the_guards_refusals_are_in_ollamas_shape_under_api(settings, model: str, engines: StubEngines) -> None:
    async with serve(settings(api_keys=["k1"], max_body_bytes=2048, max_json_depth=4)) as api:
        assert "API key" in _ollama_error(await api.get("/api/tags"), 401)
        auth = {"authorization": "Bearer k1"}
        assert (await api.get("/api/tags", headers=auth)).status_code == 200
        big = {"model": M, "input": "x" * 4096}
        assert "max_body_bytes" in _ollama_error(await api.post("/api/embed", json=big, headers=auth), 413)
        deep = {"model": M, "input": "a", "options": {"a": {"b": {"c": {"d": {}}}}}}
        assert "max_json_depth" in _ollama_error(await api.post("/api/embed", json=deep, headers=auth), 400)
        r = await api.get("/v1/models")  # OpenAI's shape elsewhere
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def test_a_request_cut_off_by_shutdown_gets_a_503_in_ollamas_shape(settings, tmp_path: Path) -> None:
    """The guard's own answers are shaped by path too: here the 503 of a request the shutdown grace ends."""

    async def stuck(scope, receive, send) -> None:
        await asyncio.Event().wait()

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    guard = Guard(stuck, settings(), logs_dir=tmp_path / "logs")
    scope = {"type": "http", "method": "POST", "path": "/api/embed", "scheme": "http", "headers": []}
    task = asyncio.ensure_future(guard(scope, receive, send))
    await asyncio.sleep(0.05)
    task.cancel()
    await task
    start, body = sent
    assert start["status"] == 503
    assert "shutting down" in json.loads(body["body"])["error"]
