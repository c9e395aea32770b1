"""The HTTP path's cuts (bench/http_path.py) keep every behaviour: the lean embeddings route is still a
documented FastAPI route whose errors are OpenAI's; the guard's remembered Host verdicts stay right; the
access log still rolls over and writes every path; a response's head goes out with its body, unless
streamed."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter, Request, Response

from cortex.api.guard import Guard, _AccessFile
from cortex.api.http_protocol import _CycleTransport
from cortex.api.lean_route import LeanRoute
from cortex.config import Settings
from tests.unit.support import serve

pytestmark = pytest.mark.anyio


def test_lean_route_refuses_an_endpoint_that_needs_fastapis_handler() -> None:
    router = APIRouter(route_class=LeanRoute)

    async def with_query(request: Request, limit: int) -> Response:
        return Response()

    def sync(request: Request) -> Response:
        return Response()

    for endpoint in (with_query, sync):
        with pytest.raises(TypeError, match="LeanRoute"):
            router.post("/x")(endpoint)


async def test_embeddings_route_is_still_documented_with_its_body(tmp_path: Path) -> None:
    async with serve(Settings(data_dir=tmp_path)) as client:
        spec = (await client.get("/openapi.json")).json()
        post = spec["paths"]["/v1/embeddings"]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert {"input", "model"} <= set(schema["properties"])
        assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("EmbeddingResponse")
        r = await client.post("/v1/embeddings", content=b"{")
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_host_answers_are_remembered_but_stay_right_beyond_the_memory(tmp_path: Path) -> None:
    """The guard remembers each Host header's verdict (at most 256): the same verdicts every time, for more
    distinct hosts than it remembers."""
    guard = Guard(Echo(), Settings(data_dir=tmp_path, allowed_hosts=["cortex.internal"]), logs_dir=tmp_path / "logs")
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:39281") as client:
        for round_ in range(2):
            for i in range(300):
                host, allowed = (f"127.0.0.{i % 250 + 1}:{i}", True) if i % 2 else (f"evil{i}.example", False)
                r = await client.get("/x", headers={"Host": host})
                assert r.status_code == (200 if allowed else 403), (round_, host, r.text)
            assert (await client.get("/x", headers={"Host": "cortex.internal:81"})).status_code == 200
            assert len(guard._hosts_seen) <= 256


@pytest.mark.parametrize("pad", ["x" * 20, "模型" * 5], ids=["ascii", "utf-8"])
def test_the_access_file_rolls_over_by_its_size(tmp_path: Path, pad: str) -> None:
    """By its size in bytes: a line of model names in UTF-8 is longer in bytes than in characters."""
    path = tmp_path / "access.jsonl"
    handler = _AccessFile(path, maxBytes=100, backupCount=2, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(9):
        line = json.dumps({"n": i, "pad": pad}, ensure_ascii=False)
        handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
    handler.close()
    lines = [
        json.loads(line)["n"]
        for p in (path.with_suffix(".jsonl.2"), path.with_suffix(".jsonl.1"), path)
        for line in p.read_text().splitlines()
    ]
    assert lines == list(range(9))[-len(lines) :] and lines[-1] == 8
    assert all(p.stat().st_size < 100 for p in (path, path.with_suffix(".jsonl.1"), path.with_suffix(".jsonl.2")))


def test_an_access_file_that_is_a_fifo_gets_every_line_and_never_rolls_over(tmp_path: Path) -> None:
    """logs/access.jsonl made a named pipe to a log shipper: each line goes through, none is lost to a seek."""
    path = tmp_path / "access.jsonl"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        handler = _AccessFile(path, maxBytes=100, backupCount=2, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        for i in range(3):
            handler.handle(logging.makeLogRecord({"msg": json.dumps({"n": i, "pad": "x" * 60}), "levelno": 20}))
        handler.close()
        got = os.read(reader, 1 << 16).decode().splitlines()
    finally:
        os.close(reader)
    assert [json.loads(line)["n"] for line in got] == [0, 1, 2] and path.is_fifo()


async def test_an_access_line_for_a_path_orjson_refuses(tmp_path: Path) -> None:
    guard = Guard(Echo(), Settings(data_dir=tmp_path), logs_dir=tmp_path / "logs")
    scope = {"method": "GET", "path": "/caf\udce9"}
    guard._log(scope, {"access": {"model": "m\u00e9"}}, "abc", 404, 0.001)
    line = (tmp_path / "logs" / "access.jsonl").read_text().splitlines()[-1]
    assert json.loads(line)["route"] == "/caf\udce9" and json.loads(line)["model"] == "m\u00e9"


class Echo:
    """An ASGI app that answers 200 empty, having read the body."""

    async def __call__(self, scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


def _cycle_transport(method: str = "POST", chunked: bool | None = False, length: int = 5):
    protocol = SimpleNamespace(transport=_Transport())
    cycle = SimpleNamespace(
        response_started=False, chunked_encoding=chunked, expected_content_length=length, scope={"method": method}
    )
    return _CycleTransport(protocol, cycle), cycle, protocol.transport.writes  # type: ignore[arg-type]


def test_a_response_head_goes_out_with_its_body() -> None:
    transport, cycle, writes = _cycle_transport()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the answer starts: at once
    cycle.response_started = True
    transport.write(b"HEAD\r\n\r\n")
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.write(b"ab")
    transport.write(b"cde")
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"HEAD\r\n\r\nab", b"cde"]
    assert transport.is_closing() is False  # the rest is the transport's


@pytest.mark.parametrize(("method", "chunked", "length"), [("POST", True, 0), ("HEAD", False, 5), ("GET", False, 0)])
def test_a_streamed_empty_or_head_response_gets_its_head_at_once(method: str, chunked: bool, length: int) -> None:
    transport, cycle, writes = _cycle_transport(method, chunked, length)
    cycle.response_started = True
    transport.write(b"HEAD\r\n\r\n")
    assert writes == [b"HEAD\r\n\r\n"]
