"""The ASGI layer in front of the app: request ids, access control, body limits, the access log.

Every request, in order:
1. gets an id (`X-Request-Id` on every response) and a line in `logs/access.jsonl` when it ends
   (on stderr for a read-only data folder), and is counted and timed in the app's metrics (GET /metrics);
2. on a loopback-bound server, must carry a loopback `Host` (or one of `allowed_hosts`): DNS rebinding;
3. with an `Origin`, must come from an allowed origin (or the server's own); a preflight from any
   other gets a 403 without `Access-Control-Allow-*` headers, so web pages cannot drive the API;
4. when API keys are set, must send `Authorization: Bearer KEY` (all routes but health and docs);
5. has its body read here, up to `max_body_bytes` (413 beyond) and `max_json_depth` (400 beyond),
   before the app sees it;
6. if still unanswered when the shutdown grace runs out, gets a 503 `server_shutting_down`.
Every refusal is in OpenAI's error shape, or in Ollama's under its routes (`cortex.api.errors.shaped`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import logging.handlers
import re
import sys
import time
import uuid
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.api.errors import shaped
from cortex.config import Settings
from cortex.errors import ShuttingDown, error_body
from cortex.logs import REQUEST_ID

if TYPE_CHECKING:
    from cortex.metrics import Metrics

_log = logging.getLogger("cortex.api")
_OPEN_PATHS = frozenset({"/healthz", "/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_OPEN_PREFIX = "/docs/assets/"  # the docs pages' scripts and styles, served from the package (works offline)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (with or without brackets)."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """`[::1]:39281` -> `[::1]`, `localhost:39281` -> `localhost`."""
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True if the JSON text nests arrays/objects deeper than `limit` (strings are skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _BRACKETS.findall(_JSON_STRING.sub(b"", body))
    return max(accumulate(1 if b in (b"[", b"{") else -1 for b in brackets), default=0) > limit


class _AccessFile(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that tells whether to roll over from where its file ends, not with two stats, a seek
    and the line formatted a second time per line: half the access log's cost per request."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        try:
            end = self.stream.tell()
        except OSError:  # not a regular file (a FIFO to a log shipper): never rolled over, as the stdlib does
            return False
        return end + len(record.getMessage().encode("utf-8")) + 1 >= self.maxBytes  # bytes: names may be UTF-8


def access_logger(logs_dir: Path | None) -> logging.Logger:
    """A JSON-lines logger on logs/access.jsonl, rotated at 10 MiB, 5 files kept; on stderr when
    `logs_dir` is None (a read-only data folder)."""
    logger = logging.getLogger(f"cortex.access.{logs_dir or '-'}")
    if not logger.handlers:
        handler: logging.Handler
        if logs_dir is None:
            handler = logging.StreamHandler(sys.stderr)
        else:
            logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            handler = _AccessFile(logs_dir / "access.jsonl", maxBytes=10 * 2**20, backupCount=5, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class Guard:
    """Pure ASGI middleware wrapping the whole app (outside FastAPI's own error handling)."""

    def __init__(
        self, app: ASGIApp, settings: Settings, *, logs_dir: Path | None, metrics: Metrics | None = None
    ) -> None:
        """`logs_dir`: the access log's folder, None for stderr (see access_logger); `metrics`: the app's
        (`app.state.metrics`), where every request is counted, refusals included."""
        self.app = app
        self.settings = settings
        self.keys = [k.encode() for k in settings.all_api_keys()]
        self.check_host = is_loopback_host(settings.host)
        self.allowed_hosts = {h.lower() for h in settings.allowed_hosts}
        self._hosts_seen: dict[str, bool] = {}  # Host header -> allowed: clients send the same one every time
        self.allowed_origins = set(settings.allowed_origins)
        self.log = access_logger(logs_dir)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        in_request = REQUEST_ID.set(request_id)  # every server.log line until the end names it (cortex.logs)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        cors_origin: str | None = None
        status = 0
        started = time.perf_counter()
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = MutableHeaders(scope=message)
                out["x-request-id"] = request_id
                if cors_origin:
                    out["access-control-allow-origin"] = cors_origin
                    out.append("vary", "Origin")
            await send(message)

        try:
            refusal = self._refusal(scope, headers, origin)
            if refusal is not None:
                await _respond(send_with_headers, path, *refusal)
                return
            if origin is not None:
                cors_origin = origin
                if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                    await _respond(send_with_headers, path, 204, None, _preflight_headers())
                    return
            if not self._authorized(scope["path"], headers):
                await _respond(
                    send_with_headers,
                    path,
                    401,
                    _error("Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.", "invalid_api_key"),
                    {"www-authenticate": 'Bearer realm="cortex"'},
                )
                return
            body_receive = await self._read_body(headers, receive, send_with_headers, path)
            if body_receive is not None:
                await self.app(scope, body_receive, send_with_headers)
        except asyncio.CancelledError:
            # uvicorn cancels a request only when its shutdown grace has run out, then answers a plain-text
            # 500 without our headers. Answer it in OpenAI's shape instead: the cancellation ends here.
            if status:
                raise  # the answer had begun: uvicorn can only close the connection
            shutting_down = ShuttingDown()
            retry = {"retry-after": str(shutting_down.retry_after_s), "connection": "close"}
            await _respond(send_with_headers, path, shutting_down.status, shutting_down.to_dict(), retry)
        except Exception as exc:
            # The app's handler answered a 500 and logged it with this request's id, and Starlette raises it
            # again "for the server to log": uvicorn would log it a second time, without the id. Log here
            # only what no handler saw (an error once a streamed answer had begun), and end it here.
            if state.get("logged_error") is not exc:
                _log.exception("error while answering %s %s", scope["method"], scope["path"])
            if not status:
                body = error_body("The server had an error.", type="server_error")
                await _respond(send_with_headers, path, 500, body, {})
        finally:
            elapsed = time.perf_counter() - started
            self._log(scope, state, request_id, status, elapsed)
            if self.metrics is not None:
                self.metrics.request(scope, status or 499, elapsed)  # 499: the client left before an answer
            REQUEST_ID.reset(in_request)

    def _refusal(self, scope: Scope, headers: Headers, origin: str | None) -> tuple | None:
        host = headers.get("host")
        if self.check_host and host is not None and not self._host_allowed(host):
            return 403, _error(f"Host {host!r} is not allowed (allowed_hosts).", "host_not_allowed"), {}
        if origin is not None and origin not in self.allowed_origins and not _same_origin(scope, origin, host):
            return 403, _error(f"Origin {origin!r} is not allowed (allowed_origins).", "origin_not_allowed"), {}
        return None

    def _host_allowed(self, host: str) -> bool:
        """Whether a loopback-bound server answers `host` (DNS rebinding); remembered for the next requests, at
        most 256 distinct Host values (then forgotten at once: a client cannot grow it)."""
        allowed = self._hosts_seen.get(host)
        if allowed is None:
            name = _host_name(host).lower()
            allowed = is_loopback_host(name) or name in self.allowed_hosts
            if len(self._hosts_seen) >= 256:
                self._hosts_seen.clear()
            self._hosts_seen[host] = allowed
        return allowed

    def _authorized(self, path: str, headers: Headers) -> bool:
        if not self.keys or path in _OPEN_PATHS or path.startswith(_OPEN_PREFIX):
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        ok = False
        for key in self.keys:  # compare with every key, in constant time each
            ok |= hmac.compare_digest(given, key)
        return ok and scheme.lower() == "bearer"

    async def _read_body(self, headers: Headers, receive: Receive, send: Send, path: str) -> Receive | None:
        """Read the whole body within limits; return a receive() that replays it, or None if answered."""
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, path, limit)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, path, limit)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        depth = self.settings.max_json_depth
        if json_depth_exceeds(body, depth):
            await _respond(
                send,
                path,
                400,
                _error(f"The JSON body nests deeper than {depth} levels (max_json_depth).", "json_too_deep"),
                {},
            )
            return None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _log(self, scope: Scope, state: dict, request_id: str, status: int, elapsed: float) -> None:
        entry: dict[str, Any] = {
            "time": round(time.time(), 3),
            "id": request_id,
            "method": scope["method"],
            "route": scope["path"],
            "status": status,
            "latency_ms": round(elapsed * 1000, 2),
        }
        entry.update(state.get("access", {}))
        try:
            line = orjson.dumps(entry).decode()
        except TypeError:  # a lone surrogate in the path, which orjson refuses
            line = json.dumps(entry, ensure_ascii=True)
        self.log.info(line)


def _same_origin(scope: Scope, origin: str, host: str | None) -> bool:
    """A page served by this server itself (the /docs UI) may call it."""
    return host is not None and origin == f"{scope.get('scheme', 'http')}://{host}"


def _preflight_headers() -> dict[str, str]:
    return {
        "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
        "access-control-allow-headers": "Authorization, Content-Type",
        "access-control-max-age": "600",
    }


async def _too_large(send: Send, path: str, limit: int) -> None:
    message = f"The request body exceeds the limit of {limit} bytes (max_body_bytes)."
    await _respond(send, path, 413, _error(message, "request_too_large"), {"connection": "close"})


def _error(message: str, code: str) -> dict:
    return error_body(message, type="invalid_request_error", code=code)


async def _respond(send: Send, path: str, status: int, body: dict | None, headers: dict[str, str]) -> None:
    """Answer with `body`, an error in OpenAI's shape (shaped for `path`), or nothing."""
    payload = b"" if body is None else json.dumps(shaped(path, body)).encode()
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    if body is not None:
        raw += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
