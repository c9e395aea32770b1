"""The guard in front of the app (cortex.api.guard.Guard), around an app that echoes what reaches it: host and
origin checks, API keys, body size and JSON depth limits, request ids, the access log, and the 503 for a
request still unanswered when the shutdown grace ends. Every refusal is in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from cortex.api.guard import Guard, is_loopback_host, json_depth_exceeds
from cortex.config import Settings

pytestmark = pytest.mark.anyio

KEYS = ["first-key-123", "second-key-456"]
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
LIMIT = 2048


class Echo:
    """An ASGI app that answers 200 with the path and the number of body bytes it received."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.dumps({"path": scope["path"], "bytes": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def guarded(settings: Callable[..., Settings], echo: Echo, tmp_path: Path):
    """`guarded(**settings)`: a client of the echo app behind a Guard built with those settings."""

    def make(**overrides: object) -> httpx.AsyncClient:
        s = settings(**overrides)
        guard = Guard(echo, s, logs_dir=tmp_path / "logs")
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://127.0.0.1:39281")

    return make


@pytest.fixture
async def keyed(guarded) -> AsyncIterator[httpx.AsyncClient]:
    """Keys, an allowed proxy host and an allowed origin, and small limits."""
    async with guarded(
        api_keys=KEYS,
        allowed_hosts=["cortex.internal"],
        allowed_origins=["https://app.example"],
        max_body_bytes=LIMIT,
        max_json_depth=4,
    ) as client:
        yield client


def _refused(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == ("invalid_request_error", code)
    assert r.headers["x-request-id"]
    return err


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:39281", True),
        ("localhost", True),
        ("api.localhost:1234", True),
        ("127.0.0.2", True),
        ("[::1]:39281", True),
        ("cortex.internal:8080", True),  # allowed_hosts, any port
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("10.0.0.1:39281", False),
    ],
)
async def test_a_loopback_server_answers_only_loopback_and_allowed_hosts(keyed, host: str, allowed: bool) -> None:
    r = await keyed.get("/v1/models", headers={**AUTH, "Host": host})
    if allowed:
        assert r.status_code == 200, r.text
    else:
        assert "not allowed" in _refused(r, 403, "host_not_allowed")["message"]


async def test_a_server_bound_beyond_loopback_leaves_the_host_to_its_keys(guarded) -> None:
    async with guarded(host="0.0.0.0", api_keys=KEYS) as client:
        assert (await client.get("/v1/models", headers={**AUTH, "Host": "evil.example"})).status_code == 200
        _refused(await client.get("/v1/models", headers={"Host": "evil.example"}), 401, "invalid_api_key")


async def test_origins_and_preflights(keyed) -> None:
    foreign = {"Origin": "https://evil.example"}
    _refused(await keyed.get("/v1/models", headers={**AUTH, **foreign}), 403, "origin_not_allowed")
    r = await keyed.options("/v1/embeddings", headers={**foreign, "Access-Control-Request-Method": "POST"})
    _refused(r, 403, "origin_not_allowed")
    assert not [h for h in r.headers if h.lower().startswith("access-control-allow")]

    ok = {"Origin": "https://app.example"}
    r = await keyed.options("/v1/embeddings", headers={**ok, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert (
        "POST" in r.headers["access-control-allow-methods"]
        and "Authorization" in r.headers["access-control-allow-headers"]
    )
    r = await keyed.get("/v1/models", headers={**AUTH, **ok})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "Origin" in r.headers["vary"]
    same = {"Origin": "http://127.0.0.1:39281"}  # the server's own /docs page
    assert (await keyed.get("/v1/models", headers={**AUTH, **same})).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS[0]}, {"Authorization": f"Basic {KEYS[0]}"},
     {"Authorization": f"Bearer {KEYS[0]}x"}, {"Authorization": "Bearer "}],
    ids=["none", "wrong key", "no scheme", "basic", "longer key", "empty"],
)  # fmt: skip
async def test_a_missing_or_wrong_key_is_401_and_the_app_never_sees_it(keyed, echo: Echo, headers: dict) -> None:
    r = await keyed.post("/v1/embeddings", json={"model": "m:1", "input": "x"}, headers=headers)
    _refused(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert echo.calls == 0


async def test_every_key_works_and_open_paths_need_none(keyed, guarded, tmp_path: Path) -> None:
    for key in KEYS:
        assert (await keyed.get("/v1/models", headers={"Authorization": f"bearer {key}"})).status_code == 200
    for path in ("/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/docs/assets/x.js"):
        assert (await keyed.get(path)).status_code == 200, path
    _refused(await keyed.get("/docs-not-really"), 401, "invalid_api_key")
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\n\nfrom-a-file\n")
    async with guarded(api_key_file=keys) as client:
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer from-a-file"})).status_code == 200
        _refused(await client.get("/v1/models"), 401, "invalid_api_key")


async def test_a_body_over_the_limit_is_413_before_the_app_reads_it(keyed, echo: Echo) -> None:
    r = await keyed.post("/v1/embeddings", content=b"x" * (LIMIT + 1), headers=AUTH)  # declared too large
    assert "2048 bytes" in _refused(r, 413, "request_too_large")["message"]
    assert r.headers["connection"] == "close"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: found too large while read
        for _ in range(3):
            yield b"x" * 1000

    _refused(await keyed.post("/v1/embeddings", content=chunks(), headers=AUTH), 413, "request_too_large")
    assert echo.calls == 0
    r = await keyed.post("/v1/embeddings", content=b"x" * LIMIT, headers=AUTH)  # the limit itself passes, whole
    assert r.status_code == 200 and r.json() == {"path": "/v1/embeddings", "bytes": LIMIT}


@pytest.mark.parametrize(
    ("body", "too_deep"),
    [
        (b'{"input": [[[1]]]}', False),  # depth 4: the limit
        (b'{"input": [[[[1]]]]}', True),
        (b'{"input": "a", "ignored": {"a": {"b": {"c": {}}}}}', True),  # unknown fields count too
        (b'{"input": "[[[[[[[[[[ {{{{{{{{"}', False),  # brackets inside strings do not
        (b'{"input": "\\" [[[[[[[[[["}', False),  # nor after an escaped quote
        (b"[" * 2000, True),
    ],
)
async def test_json_nested_beyond_the_limit_is_400(keyed, echo: Echo, body: bytes, too_deep: bool) -> None:
    r = await keyed.post("/v1/embeddings", content=body, headers={**AUTH, "Content-Type": "application/json"})
    if too_deep:
        assert "4 levels" in _refused(r, 400, "json_too_deep")["message"]
        assert echo.calls == 0
    else:
        assert r.status_code == 200 and r.json()["bytes"] == len(body)


async def test_request_ids_and_the_access_log(keyed, tmp_path: Path) -> None:
    secret = "my very private sentence"
    first = await keyed.post("/v1/embeddings", json={"input": secret}, headers=AUTH)
    refused = await keyed.get("/v1/models")
    ids = {first.headers["x-request-id"], refused.headers["x-request-id"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
    text = (tmp_path / "logs" / "access.jsonl").read_text()
    entries = {e["id"]: e for e in map(json.loads, text.splitlines())}
    assert ids <= set(entries)
    entry = entries[first.headers["x-request-id"]]
    assert (entry["method"], entry["route"], entry["status"]) == ("POST", "/v1/embeddings", 200)
    assert entry["latency_ms"] >= 0
    assert entries[refused.headers["x-request-id"]]["status"] == 401
    assert secret not in text and KEYS[0] not in text


async def test_a_request_cancelled_by_the_end_of_the_grace_gets_a_503(settings, tmp_path: Path) -> None:
    """uvicorn cancels what is unanswered when the shutdown grace runs out; the guard answers it."""

    async def stuck(scope, receive, send) -> None:
        await asyncio.Event().wait()

    guard = Guard(stuck, settings(), logs_dir=tmp_path / "logs")
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "scheme": "http", "headers": []}
    task = asyncio.ensure_future(guard(scope, receive, send))
    await asyncio.sleep(0.05)
    task.cancel()
    await task  # the cancellation ends in the guard, with an answer
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert start["status"] == 503 and headers["retry-after"] == "5" and headers["connection"] == "close"
    error = json.loads(body["body"])["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_shutting_down")
    log = (tmp_path / "logs" / "access.jsonl").read_text()
    assert json.loads(log.splitlines()[-1])["status"] == 503


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST.", True), ("a.localhost", True), ("127.8.9.1", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("localhost.evil", False), ("example.com", False), ("", False)],
)  # fmt: skip
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_json_depth_counts_only_brackets_outside_strings() -> None:
    assert not json_depth_exceeds(b"[[1]]", 2)
    assert json_depth_exceeds(b"[[[1]]]", 2)
    assert not json_depth_exceeds(b'["[[[[", {"a": "]]]]{{{{"}]', 2)
    assert not json_depth_exceeds(b"[1], [2], [3], [4]", 2)  # many, but side by side
