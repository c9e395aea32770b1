"""The model routes against a real server: import, list, get, start, stop, delete, and bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.helpers import MODEL


def test_list_has_openai_model_objects(http) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert MODEL in ids
    m = next(m for m in body["data"] if m["id"] == MODEL)
    assert {"id", "object", "created", "owned_by"} <= set(m)
    assert m["object"] == "model" and m["owned_by"] == "cortex"
    assert (m["n_embd"], m["pooling"], m["engine"], m["architecture"]) == (640, "mean", "llama-cpp", "gemma3")
    assert m["ctx_len"] == 2048


def test_get_one_model_and_unknown_is_404(http) -> None:
    r = http.get(f"/v1/models/{MODEL}")
    assert r.status_code == 200 and r.json()["id"] == MODEL
    r = http.get("/v1/models/absent:1b")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_start_stop_and_load_on_demand(http, tmp_path, gemma_gguf: Path) -> None:
    model_id = "gemma3:cycle"
    r = http.post("/v1/models/import", json={"model": model_id, "model_path": str(gemma_gguf)})
    assert r.status_code == 200 and r.json()["status"] == "stored"
    started = http.post("/v1/models/start", json={"model": model_id}).json()
    assert started["status"] == "loaded" and started["memory_bytes"] > 100_000_000
    stopped = http.post("/v1/models/stop", json={"model": model_id}).json()
    assert stopped == {"id": model_id, "status": "stored", "was_loaded": True}
    assert http.post("/v1/models/stop", json={"model": model_id}).json()["was_loaded"] is False
    # a stored model loads on its first request
    r = http.post("/v1/embeddings", json={"model": model_id, "input": "hello"})
    assert r.status_code == 200
    assert http.get(f"/v1/models/{model_id}").json()["status"] == "loaded"
    # delete unloads it and removes its folder
    r = http.delete(f"/v1/models/{model_id}")
    assert r.json() == {"id": model_id, "object": "model", "deleted": True}
    assert http.get(f"/v1/models/{model_id}").status_code == 404
    assert http.post("/v1/embeddings", json={"model": model_id, "input": "hello"}).status_code == 404


def test_import_twice_is_a_conflict(http, gemma_gguf: Path) -> None:
    r = http.post("/v1/models/import", json={"model": MODEL, "model_path": str(gemma_gguf)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def _bad_import(http, tmp_path: Path, name: str, data: bytes | None) -> dict:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    r = http.post("/v1/models/import", json={"model": "bad:file", "model_path": str(path)})
    assert r.status_code == 400, r.text
    assert "bad:file" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    return r.json()["error"]


def test_import_refuses_a_file_that_is_not_gguf(http, tmp_path: Path) -> None:
    err = _bad_import(http, tmp_path, "notes.gguf", b"hello, I am a text file" * 100)
    assert err["code"] == "invalid_model_file" and "not a valid GGUF" in err["message"]


def test_import_refuses_a_truncated_gguf(http, tmp_path: Path, gemma_gguf: Path) -> None:
    with open(gemma_gguf, "rb") as f:
        head = f.read(os.path.getsize(gemma_gguf) // 2)
    err = _bad_import(http, tmp_path, "half.gguf", head)
    assert err["code"] == "invalid_model_file"
    assert "truncated" in err["message"] or "not a valid GGUF" in err["message"]


def test_import_refuses_missing_files_and_devices(http, tmp_path: Path) -> None:
    err = _bad_import(http, tmp_path, "absent.gguf", None)
    assert "no such file" in err["message"] and err["param"] == "model_path"
    r = http.post("/v1/models/import", json={"model": "bad:dev", "model_path": "/dev/zero"})
    assert r.status_code == 400 and "not a regular file" in r.json()["error"]["message"]
    r = http.post("/v1/models/import", json={"model": "bad:dir", "model_path": str(tmp_path)})
    assert r.status_code == 400


@pytest.mark.parametrize("bad_id", ["../escape", "/abs/path", "a\\b", "a\x00b", "..", "a:b:c", "x" * 300, ""])
def test_ids_that_could_leave_the_store_are_refused(http, gemma_gguf: Path, bad_id: str) -> None:
    r = http.post("/v1/models/import", json={"model": bad_id, "model_path": str(gemma_gguf)})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


def test_import_without_path_needs_a_builtin(http) -> None:
    r = http.post("/v1/models/import", json={"model": "custom:1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_path"


def test_docs_and_openapi_are_served(http) -> None:
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"]
    schema = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "input" in schema["properties"]
