"""The CLI's HTTP client: every command but `start` talks to the server like any other client, and reads
its answers into the API's own types (`cortex.schemas`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from cortex.errors import ErrorBody

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def parse(schema: type[M], data: object, what: str) -> M:
    """`data`, an answer to `what`, as a `schema`; ApiError if it is not one (a server of another version)."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ApiError(f"The server's answer to {what} is not what this CLI expects: {exc}") from exc


def _api_error(body: object, status: int | None, fallback: str) -> ApiError:
    """An error answer in OpenAI's shape as an ApiError; `fallback` is the message when it is not."""
    try:
        error = ErrorBody.model_validate(body).error
    except ValidationError:
        return ApiError(fallback, status)
    return ApiError(error.message, status, error.code)


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # our own server: a self-signed certificate on loopback is expected, not a risk
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, verify=False)

    def request(self, method: str, path: str, json: Any = None, into: type[BaseModel] | None = None) -> Any:
        """The answer's JSON body, as an `into` when given; ApiError for an error answer or none."""
        try:
            r = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ApiError(f"Cannot reach the server at {self.base_url}: {exc}") from exc
        body = self._body(r)
        return body if into is None else parse(into, body, f"{method} {path}")

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
                            raise _api_error(data, None, f"The server sent an error event: {line[5:].strip()}")
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
            raise _api_error(body, r.status_code, f"HTTP {r.status_code}: {r.text[:500]}")
        return body

    def get(self, path: str, into: type[BaseModel] | None = None) -> Any:
        return self.request("GET", path, into=into)

    def post(self, path: str, json: Any, into: type[BaseModel] | None = None) -> Any:
        return self.request("POST", path, json=json, into=into)

    def delete(self, path: str, into: type[BaseModel] | None = None) -> Any:
        return self.request("DELETE", path, into=into)
