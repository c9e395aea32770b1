"""Server-sent events framing, for the streams of imports and pulls."""

from __future__ import annotations

import orjson


def sse_event(event: str, data: object) -> bytes:
    """One `event:` / `data:` frame with a JSON payload."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
