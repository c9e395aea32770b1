"""`/v1/models` routes in process, through the guard, with stub engines and model folders written by hand:
list, get, start, stop, delete, their 400/404/409s, the imports refused before any weights are read, a
read-only store, and models whose files changed. The real imports and engines run in tests/e2e."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cortex.config import Settings
from tests.unit.support import StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

ERROR_FIELDS = {"message", "type", "param", "code"}


def _error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI-shaped error of `r`, after checking its status, code and param."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == ERROR_FIELDS, err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert err["code"] == code and err["param"] == param, err
    assert r.headers["x-request-id"]
    return err


async def test_list_and_get_answer_openai_model_objects(api: httpx.AsyncClient, models_dir: Path) -> None:
    assert (await api.get("/v1/models")).json() == {"object": "list", "data": []}
    write_model(models_dir, "zeta:1", n_embd=16, pooling="cls")
    write_model(models_dir, "acme/x:F16")
    body = (await api.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == ["acme/x:F16", "zeta:1"]
    zeta = body["data"][1]
    assert (zeta["object"], zeta["owned_by"], zeta["status"], zeta["memory_bytes"]) == (
        "model",
        "cortex",
        "stored",
        None,
    )
    assert (zeta["n_embd"], zeta["pooling"], zeta["ctx_len"], zeta["engine"]) == (16, "cls", 16, "llama-cpp")
    assert isinstance(zeta["created"], int) and zeta["size"] == 64
    assert (await api.get("/v1/models/zeta:1")).json() == zeta
    assert (await api.get("/v1/models/acme/x:F16")).json()["id"] == "acme/x:F16"  # an ORG/ id in the path


async def test_get_resolves_a_bare_name_and_refuses_what_it_cannot(api: httpx.AsyncClient, models_dir: Path) -> None:
    write_model(models_dir, "mini:a")
    assert (await api.get("/v1/models/mini")).json()["id"] == "mini:a"
    write_model(models_dir, "mini:b")
    assert (
        "could mean mini:a, mini:b"
        in _error(await api.get("/v1/models/mini"), 404, "model_not_found", "model")["message"]
    )
    assert "`absent:1`" in _error(await api.get("/v1/models/absent:1"), 404, "model_not_found", "model")["message"]
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a:b:c", "a\\b", "x" * 300):
        _error(await api.get(f"/v1/models/{bad}"), 400, None, "model")
        _error(await api.delete(f"/v1/models/{bad}"), 400, None, "model")


async def test_start_stop_and_status(api: httpx.AsyncClient, models_dir: Path, engines: StubEngines) -> None:
    write_model(models_dir, "m:1")
    started = (await api.post("/v1/models/start", json={"model": "m"})).json()
    assert started["id"] == "m:1" and started["status"] == "loaded"
    assert started["memory_bytes"] == engines[0].memory_bytes() > 0
    assert (await api.get("/v1/models/m:1")).json()["status"] == "loaded"
    assert (await api.post("/v1/models/start", json={"model": "m:1"})).status_code == 200 and len(engines) == 1
    r = await api.post("/v1/models/stop", json={"model": "m"})
    assert r.json() == {"id": "m:1", "status": "stored", "was_loaded": True} and engines[0].closed
    assert (await api.post("/v1/models/stop", json={"model": "m:1"})).json()["was_loaded"] is False
    assert (await api.get("/v1/models/m:1")).json()["status"] == "stored"
    _error(await api.post("/v1/models/stop", json={"model": "no:pe"}), 404, "model_not_found", "model")
    _error(await api.post("/v1/models/start", json={"model": "no:pe"}), 404, "model_not_found", "model")


async def test_delete_unloads_removes_and_then_answers_404(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "m:1")
    assert (await api.post("/v1/embeddings", json={"model": "m:1", "input": "hi"})).status_code == 200
    r = await api.delete("/v1/models/m")
    assert r.json() == {"id": "m:1", "object": "model", "deleted": True}
    assert engines[0].closed and not (models_dir / "m@1").exists()
    _error(await api.get("/v1/models/m:1"), 404, "model_not_found", "model")
    _error(await api.post("/v1/embeddings", json={"model": "m:1", "input": "hi"}), 404, "model_not_found", "model")
    _error(await api.delete("/v1/models/m:1"), 404, "model_not_found", "model")


@pytest.mark.parametrize("path", ["/v1/models/start", "/v1/models/stop"])
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        pytest.param({"model": 5}, "model", "'model'", id="number"),
        pytest.param({"model": None}, "model", "'model'", id="null"),
        pytest.param({"model": ["m:1"]}, "model", "'model'", id="list"),
        pytest.param({}, "model", "provide a 'model' parameter", id="missing"),
        pytest.param(b"[1, 2]", None, "Invalid value", id="an array"),
        pytest.param(b"null", None, "Invalid value", id="null body"),
        pytest.param(b"nope", None, "not valid JSON", id="not JSON"),  # FastAPI's loc was once the param: '0'
        pytest.param(b"", None, "JSON body", id="empty"),  # and this asked for a 'None' parameter
    ],
)
async def test_wrong_bodies_on_model_routes_are_400_not_422(
    api: httpx.AsyncClient, path: str, body: dict | bytes, param: str | None, words: str
) -> None:
    if isinstance(body, bytes):
        r = await api.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = await api.post(path, json=body)
    assert words in _error(r, 400, None, param)["message"]


async def test_unknown_routes_and_wrong_methods_have_openai_shape(api: httpx.AsyncClient) -> None:
    assert "POST /v1/nowhere" in _error(await api.post("/v1/nowhere", json={}), 404)["message"]
    assert "GET" in _error(await api.get("/v1/embeddings"), 405)["message"]
    _error(await api.put("/v1/models/m:1", json={}), 405)


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "words"),
    [
        ({"model": "custom:1"}, 400, None, "model_path", "not a built-in model"),
        ({"model": "taken:1", "model_path": "/nonexistent.gguf"}, 409, "conflict", "model", "already exists"),
        ({"model": "pull/abc", "model_path": "/nonexistent.gguf"}, 400, None, "model", "reserved"),
        ({"model": "../x", "model_path": "/nonexistent.gguf"}, 400, None, "model", "Invalid model id"),
        ({"model": "x:1", "model_path": "/nonexistent.gguf"}, 400, "invalid_model_file", "model_path", "no such file"),
        ({"model": "x:1", "model_path": "/dev/zero"}, 400, "invalid_model_file", "model_path", "not a regular file"),
        ({"model": "x:1", "model_path": "/proc/self/environ"}, 400, "invalid_model_file", "model_path",
         "not a regular file"),
        ({"model": "x:1", "model_path": "/tmp", "outtype": "q2"}, 400, None, "outtype", "outtype"),
        ({"model": "x:1", "model_path": "/tmp", "pooling": "median"}, 400, None, "pooling", "pooling"),
        ({"model": "x:1", "model_path": "/tmp", "ctx_len": 0}, 400, None, "ctx_len", "ctx_len"),
        ({"model": "x:1", "model_path": "/tmp", "engine": "gpu"}, 400, None, "engine", "engine"),
        ({"model_path": "/tmp"}, 400, None, "model", "model"),
    ],
)  # fmt: skip
async def test_imports_refused_before_any_weights_are_read(
    api: httpx.AsyncClient, models_dir: Path, body: dict, status: int, code: str | None, param: str, words: str
) -> None:
    write_model(models_dir, "taken:1")
    err = _error(await api.post("/v1/models/import", json=body), status, code, param)
    assert words in err["message"]
    assert [m["id"] for m in (await api.get("/v1/models")).json()["data"]] == ["taken:1"]
    assert sorted(p.name for p in models_dir.iterdir()) == ["taken@1"]  # no staging folder left


async def test_a_read_only_store_serves_and_refuses_every_change(
    settings: Callable[..., Settings], models_dir: Path, engines: StubEngines, tmp_path: Path
) -> None:
    write_model(models_dir, "m:1")
    async with serve(settings(), read_only=True) as api:
        assert (await api.post("/v1/embeddings", json={"model": "m:1", "input": "hi"})).status_code == 200
        for r in (
            await api.post("/v1/models/import", json={"model": "m:2", "model_path": "/nonexistent.gguf"}),
            await api.delete("/v1/models/m:1"),
            await api.post("/v1/models/pull", json={"model": "acme/x"}),
        ):
            assert str(tmp_path) not in _error(r, 403, "read_only")["message"]
        assert (await api.get("/v1/models/m:1")).json()["status"] == "loaded"  # the refused delete kept it loaded
    assert (models_dir / "m@1" / "model.yml").is_file()


async def test_broken_and_foreign_folders_are_skipped_not_a_500(api: httpx.AsyncClient, models_dir: Path) -> None:
    write_model(models_dir, "m:1")
    (models_dir / "broken").mkdir()
    (models_dir / "broken" / "model.yml").write_bytes(b"id: [unclosed\n")
    (models_dir / "copy").mkdir()
    (models_dir / "copy" / "model.yml").write_bytes((models_dir / "m@1" / "model.yml").read_bytes())
    assert [m["id"] for m in (await api.get("/v1/models")).json()["data"]] == ["m:1"]
    for name in ("broken", "copy"):
        _error(await api.get(f"/v1/models/{name}"), 404, "model_not_found", "model")
        _error(await api.delete(f"/v1/models/{name}"), 404, "model_not_found", "model")
    assert (models_dir / "m@1").is_dir()


async def test_a_loaded_model_whose_weights_changed_answers_500_without_a_path(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "m:1")
    write_model(models_dir, "other:1")
    assert (await api.post("/v1/models/start", json={"model": "m:1"})).status_code == 200
    (models_dir / "m@1" / "model.gguf").write_bytes(b"GGUF" + bytes(1 << 10))
    err = _error(
        await api.post("/v1/embeddings", json={"model": "m:1", "input": "x"}), 500, "model_unavailable", "model"
    )
    assert "changed on disk" in err["message"] and str(models_dir) not in err["message"]
    assert (await api.post("/v1/embeddings", json={"model": "other:1", "input": "x"})).status_code == 200
    assert (await api.get("/healthz")).json()["status"] == "ok"


async def test_an_engine_that_no_longer_opens_is_a_500_model_unavailable(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    from cortex.errors import InvalidModelFile

    def fail(record):
        raise InvalidModelFile(f"{models_dir}/x is not a valid GGUF")

    engines.make = fail
    write_model(models_dir, "m:1")
    for r in (
        await api.post("/v1/models/start", json={"model": "m:1"}),
        await api.post("/v1/embeddings", json={"model": "m:1", "input": "x"}),
    ):
        assert "its files no longer load" in _error(r, 500, "model_unavailable", "model")["message"]


async def test_a_missing_query_parameter_is_named_as_such(api: httpx.AsyncClient) -> None:
    """Issue 14: the variants route's error said "provide a 'query' parameter" when `model` was missing."""
    err = _error(await api.get("/v1/models/pull/variants"), 400, None, "model")
    assert "'model'" in err["message"] and "query" not in err["message"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models/pull/nope"), ("DELETE", "/v1/models/pull/nope"),
                                              ("GET", "/v1/models/pull/nope/events")])  # fmt: skip
async def test_an_unknown_pull_task_is_a_404_of_its_own(api: httpx.AsyncClient, method: str, path: str) -> None:
    err = _error(await api.request(method, path), 404, "pull_task_not_found")
    assert err["message"] == "No pull task `nope`."


@pytest.mark.parametrize(
    ("stored", "asked", "meant"),
    [
        ("all-minilm:l6-v2", "all-minlm", "all-minilm:l6-v2"),
        ("llama3.1:8b-gguf-q4-km", "llama3.1:8bb-gguf-q4-km", "llama3.1:8b-gguf-q4-km"),
    ],
)
async def test_an_unknown_model_names_the_closest_stored_ids(
    api: httpx.AsyncClient, models_dir: Path, stored: str, asked: str, meant: str
) -> None:
    write_model(models_dir, stored)
    write_model(models_dir, "gemma3:270m")
    for r in (
        await api.get(f"/v1/models/{asked}"),
        await api.post("/v1/embeddings", json={"model": asked, "input": "a"}),
        await api.post("/v1/models/start", json={"model": asked}),
        await api.delete(f"/v1/models/{asked}"),
    ):
        err = _error(r, 404, "model_not_found", "model")
        assert err["message"] == f"The model `{asked}` does not exist. Did you mean `{meant}`?"
    err = _error(await api.get("/v1/models/zzz:9"), 404, "model_not_found", "model")
    assert "Did you mean" not in err["message"]
