"""The CLI's HTTP client: every command but `start` talks to the server like any other client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # our own server: a self-signed certificate on loopback is expected, not a risk
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, verify=False)

    def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ApiError(f"Cannot reach the server at {self.base_url}: {exc}") from exc
        return self._body(r)

    def events(self, path: str, json: Any = None, method: str = "POST") -> Iterator[tuple[str, Any]]:
        """Send a request and read the answer as server-sent events: (event name, decoded data)."""
        try:
            with self._http.stream(method, path, json=json) as r:
                if r.status_code >= 400 or not r.headers.get("content-type", "").startswith("text/event-stream"):
                    r.read()
                    yield "done", self._body(r)
                    return
                event = "message"
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = orjson.loads(line[5:].strip())
                        if event == "error":
                            err = data.get("error", {})
                            raise ApiError(str(err.get("message")), None, err.get("code"))
                        yield event, data
        except httpx.HTTPError as exc:
            raise ApiError(f"Lost the server at {self.base_url}: {exc}") from exc

    @staticmethod
    def _body(r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            err = (body or {}).get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                raise ApiError(str(err.get("message")), r.status_code, err.get("code"))
            raise ApiError(f"HTTP {r.status_code}: {r.text[:500]}", r.status_code)
        return body

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, json: Any) -> Any:
        return self.request("POST", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
