"""Connection-level limits that uvicorn does not enforce, added to its httptools protocol.

uvicorn has no deadline for receiving a request (a client that sends its headers one byte a minute
holds a connection forever), no bound on header size with httptools, no idle timeout before a
connection's first request, and answers too many connections with a plain-text 503. Here:

- headers larger than `max_header_bytes` -> 431, connection closed;
- a request not fully received (headers and body) within `request_timeout_s` -> 408, closed;
- a connection idle for `keepalive_timeout_s`, before its first request or between requests -> closed;
- more than `max_connections` open -> the new one is closed at once; the others are served on.

Answers are written before the request reaches the app, in OpenAI's error shape. A response's head is
written with the first part of its body (see `_CycleTransport`).

And a lingering close, as nginx (`lingering_close`) and Go's net/http do: when the app answers and closes
before the request's body has arrived (the Guard's 413), closing at once would make the kernel reset the
connection (unread data, or data still coming), and a reset can destroy the answer before the client
reads it. Instead the answer is followed by a FIN, and what the client still sends is read and dropped
until it closes too, or `max(2 * max_body_bytes, 64 MiB)` bytes have come (see `_LINGER_MIN_BYTES`), or
`request_timeout_s` passes: no longer than a request may take to arrive, so a lingering connection holds
its slot no longer than a slow client could anyway.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cortex.errors import error_body

log = logging.getLogger("cortex.http")

# The least a lingering close reads: what a client that sends its whole body before reading the answer
# (python's requests, httpx) still sends of a body several times the default limit, and far more than a
# client that reads as it sends has under way. Dropping it costs a few milliseconds of CPU on loopback.
_LINGER_MIN_BYTES = 64 * 2**20


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = orjson.dumps(error_body(message, type="invalid_request_error", code=code))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; limits come from `config.cortex_limits`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        limits = self.config.cortex_limits  # type: ignore[attr-defined]
        self._max_header_bytes: int = limits.max_header_bytes
        self._request_timeout: float = limits.request_timeout_s
        self._max_connections: int = limits.max_connections
        self.timeout_keep_alive = limits.keepalive_timeout_s
        self._refused = False
        self._in_headers = True
        self._header_bytes = 0
        self._deadline: TimerHandle | None = None  # for the request to arrive, or for a lingering close
        self._linger_bytes = max(2 * limits.max_body_bytes, _LINGER_MIN_BYTES)
        self._body_pending = False  # the current request's body has not all arrived
        self._lingering: int | None = None  # while lingering: the bytes still to read and drop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            self._refused = True
            transport.close()
            return
        super().connection_made(transport)
        # uvicorn arms its idle timer only after a first response; a silent new connection gets one too
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            self._lingering -= len(data)
            if self._lingering < 0:
                self.transport.close()
            return
        if self._in_headers:
            if self._deadline is None:
                self._deadline = self.loop.call_later(self._request_timeout, self._request_timed_out)
            self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes and not self._headers_end_in(data):
                self._reject(
                    raw_error(
                        431,
                        "Request Header Fields Too Large",
                        f"The request's headers exceed the limit of {self._max_header_bytes} bytes (max_header_bytes).",
                        "request_header_fields_too_large",
                    )
                )
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers an unparsable request in plain text; answer in OpenAI's shape."""
        self._reject(raw_error(400, "Bad Request", msg, "invalid_http_request"))

    def _headers_end_in(self, data: bytes) -> bool:
        """True if the headers end within the allowed size (the rest of `data` is body)."""
        end = data.find(b"\r\n\r\n")
        return end >= 0 and self._header_bytes - len(data) + end + 4 <= self._max_header_bytes

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._body_pending = True
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _CycleTransport(self, self.cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        super().on_response_complete()
        if self._lingering is not None:  # no keep-alive wait: the linger's own bounds end the connection
            self._unset_keepalive_if_required()

    def close_after_response(self, cycle: RequestResponseCycle) -> None:
        """Close as a request's cycle asks (after a `connection: close` answer): at once, or lingering
        while the client may still be sending that request's body."""
        if self._lingering is not None:
            return
        if cycle is not self.cycle or not self._body_pending or self.transport.is_closing():
            self.transport.close()
            return
        self._lingering = self._linger_bytes
        if self.transport.can_write_eof():  # not under TLS: there the answer's length alone delimits it
            self.transport.write_eof()  # a FIN once the answer is written: the client reads it, then EOF
        self.flow.resume_reading()
        self._disarm()
        self._deadline = self.loop.call_later(self._request_timeout, self.transport.close)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:
            return
        self._reject(
            raw_error(
                408,
                "Request Timeout",
                f"The request was not received within {self._request_timeout:g} s (request_timeout_s).",
                "request_timeout",
            )
        )

    def _reject(self, response: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's receive() sees a disconnect; its sends are dropped
            self.cycle.message_event.set()
        self.transport.write(response)
        self.transport.close()


class _CycleTransport:
    """The transport as a request's cycle sees it: all the transport's, but closing is the protocol's, and the
    head of a response whose body is to come (a content-length above 0) is held and written with the body's
    first part: one send, one TCP segment and one wake-up of the client per small answer instead of two
    (uvicorn writes the head as soon as the app starts its answer). Streamed (chunked) answers, answers to
    HEAD and empty ones get their head at once."""

    def __init__(self, protocol: GuardedHttpToolsProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._head_seen = False
        self._held: bytes | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._head_seen and self._cycle.response_started:  # the head (a 100 Continue comes before)
            self._head_seen = True
            cycle = self._cycle
            if not cycle.chunked_encoding and cycle.expected_content_length > 0 and cycle.scope["method"] != "HEAD":
                self._held = data
                return
        self._protocol.transport.write(data)

    def close(self) -> None:
        self._protocol.close_after_response(self._cycle)
