"""The server's log (cortex.logs) in process: lines written during a request name its id, a streamed
import's failure is logged and in the access log with its outcome, the libraries' chatter is DEBUG, a hub
retry warning shows once, and the file rotates."""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cortex import logs
from cortex.config import Settings
from cortex.importer import Importer
from tests.unit.support import StubEngine, StubEngines, write_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Logging as the server configures it, into tmp_path/data/logs/server.log; a reader of that file."""
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    logs.configure("info", tmp_path / "data" / "logs")
    path = tmp_path / "data" / "logs" / logs.SERVER_LOG
    yield lambda: path.read_text()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    root.handlers[:], root.level = before[0], before[1]


def _access(tmp_path: Path, request_id: str) -> dict:
    lines = (tmp_path / "data" / "logs" / "access.jsonl").read_text().splitlines()
    return next(e for e in map(json.loads, lines) if e["id"] == request_id)


def _events(r: httpx.Response) -> list[tuple[str, dict]]:
    out, event = [], "message"
    for line in r.text.splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            out.append((event, json.loads(line[5:])))
    return out


async def test_an_error_line_names_the_request_and_a_line_outside_one_does_not(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines, server_log: Callable[[], str]
) -> None:
    write_model(models_dir, "m:1")
    engines.make = lambda record: StubEngine(fail_on=666, n_embd=record.n_embd, n_ctx=record.ctx_len)
    r = await api.post("/v1/embeddings", json={"model": "m:1", "input": [[666, 1]]})
    assert r.status_code == 500
    logging.getLogger("cortex").error("outside any request")
    lines = server_log().splitlines()
    errors = [line for line in lines if " ERROR " in line and "outside any request" not in line]
    assert len(errors) == 2, lines  # the engine's failure (the scheduler's line) and the 500 it became
    assert all(f"[req {r.headers['x-request-id']}]" in line for line in errors), errors
    assert "[req" not in next(line for line in lines if "outside any request" in line)


async def test_a_failed_streamed_import_is_logged_with_its_outcome(
    api: httpx.AsyncClient, tmp_path: Path, server_log: Callable[[], str]
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    r = await api.post("/v1/models/import", json={"model": "x:1", "model_path": str(bad), "stream": True})
    assert r.status_code == 200  # the stream had begun: the status cannot tell
    (event, data), *_ = [e for e in _events(r) if e[0] != "progress"]
    assert event == "error" and data["error"]["code"] == "invalid_model_file"
    request_id = r.headers["x-request-id"]
    entry = _access(tmp_path, request_id)
    assert (entry["status"], entry["outcome"], entry["error"], entry["model"]) == (
        200,
        "error",
        "invalid_model_file",
        "x:1",
    )
    assert any("import failed" in line and f"[req {request_id}]" in line for line in server_log().splitlines())


async def test_an_unexpected_import_failure_has_the_full_error_shape_and_the_request_id(
    api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_log: Callable[[], str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a detail only the log may hold")

    monkeypatch.setattr(Importer, "run", broken)
    r = await api.post("/v1/models/import", json={"model": "x:1", "model_path": str(tmp_path), "stream": True})
    (event, data), *_ = _events(r)
    request_id = r.headers["x-request-id"]
    assert event == "error"
    assert set(data["error"]) == {"message", "type", "param", "code"} and data["error"]["type"] == "server_error"
    assert request_id in data["error"]["message"] and "detail" not in data["error"]["message"]
    assert (_access(tmp_path, request_id)["outcome"], _access(tmp_path, request_id)["error"]) == (
        "error",
        "server_error",
    )
    text = server_log()
    assert "a detail only the log may hold" in text and f"[req {request_id}]" in text


def _record(name: str, level: int, message: str, pathname: str = __file__) -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_the_libraries_chatter_is_debug(tmp_path: Path) -> None:
    quiet = logs.QuietLibraries(logging.INFO)
    ort_path = str(Path("site-packages") / "onnxruntime" / "quantization" / "quant_utils.py")
    chatter = [
        _record("onnxruntime.quantization", logging.WARNING, "Please consider to run pre-processing"),
        _record("gguf.gguf_writer", logging.INFO, "Writing the following files"),
        _record("root", logging.WARNING, "Inference failed or unsupported type to quantize", ort_path),
    ]
    assert [quiet.filter(r) for r in chatter] == [False, False, False]
    assert all(r.levelname == "DEBUG" for r in chatter)
    ours = _record("cortex.importer", logging.WARNING, "a warning of ours")
    assert quiet.filter(ours) and ours.levelname == "WARNING"
    verbose = logs.QuietLibraries(logging.DEBUG)
    assert verbose.filter(_record("gguf.gguf_writer", logging.INFO, "Writing the following files"))


def test_a_hub_retry_warning_shows_once() -> None:
    quiet = logs.QuietLibraries(logging.INFO)
    name = "huggingface_hub.utils._http"
    retries = [_record(name, logging.WARNING, f"Retrying in {n}s [Retry {n}/5].") for n in (1, 2, 4)]
    assert [quiet.filter(r) for r in retries] == [True, False, False]
    other = _record(name, logging.WARNING, "some other hub warning")
    assert quiet.filter(other) and quiet.filter(_record(name, logging.WARNING, "some other hub warning"))


def test_the_server_writes_a_rotating_server_log(settings: Callable[..., Settings]) -> None:
    from cortex.api.server import _start_logging

    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    try:
        _start_logging(settings(), [], read_only=False)
        files = [h for h in root.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
        assert len(files) == 1 and Path(files[0].baseFilename) == settings().logs_dir / "server.log"
        assert (files[0].maxBytes, files[0].backupCount) == (10 * 2**20, 5)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        root.handlers[:], root.level = before[0], before[1]


async def test_a_bug_is_one_500_naming_the_request_and_logged_once_with_it(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, server_log: Callable[[], str]
) -> None:
    from cortex.store.store import ModelStore

    def broken(self: ModelStore) -> list:
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(ModelStore, "list", broken)
    r = await api.get("/v1/models")
    request_id = r.headers["x-request-id"]
    assert r.status_code == 500 and request_id in r.json()["error"]["message"]
    text = server_log()
    assert text.count("RuntimeError: a bug in the store") == 1  # not again by the server, without the id
    assert f"ERROR cortex.api [req {request_id}]: unhandled error on GET /v1/models" in text
