"""Translate errors into responses, in one place: OpenAI's error shape, or Ollama's under its routes."""

from __future__ import annotations

import logging
import uuid

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cortex.errors import CortexError, error_body

log = logging.getLogger("cortex.api")
OLLAMA_PREFIX = "/api/"  # Ollama's API (cortex.api.routes.ollama): its clients read `{"error": "message"}`


def shaped(path: str, body: dict) -> dict:
    """The error body for a request to `path`: `body` (OpenAI's shape, see cortex.errors.error_body), or under
    Ollama's routes Ollama's `{"error": message}`. Every error answer goes through here, the guard's too."""
    if path.startswith(OLLAMA_PREFIX):
        return {"error": body["error"]["message"]}
    return body


def json_response(body: object, status: int = 200) -> Response:
    """A JSON response serialised by orjson."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(
    request: Request, status: int, message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> Response:
    body = error_body(message, type=type_, param=param, code=code)
    return json_response(shaped(request.url.path, body), status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CortexError)
    async def _cortex_error(request: Request, exc: CortexError) -> Response:
        response = json_response(shaped(request.url.path, exc.to_dict()), exc.status)
        if exc.retry_after_s is not None:
            response.headers["Retry-After"] = str(exc.retry_after_s)
        if exc.status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]  # where, not what
        param = loc[0] if loc else None
        if first.get("type") == "json_invalid":  # its loc is a position in the text, not a parameter
            param = None
            message = "We could not parse the JSON body of your request: it is not valid JSON."
        elif first.get("type") == "missing" and param is None:  # the body itself
            message = "The request needs a JSON body."
        elif first.get("type") == "missing":
            message = f"You must provide a '{param}' parameter."
        else:
            message = f"Invalid value for '{'.'.join(loc) or 'body'}': {first.get('msg', 'invalid')}."
        return error_response(request, 400, message, "invalid_request_error", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = error_response(request, exc.status_code, message, kind)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        ref = getattr(request.state, "request_id", None) or uuid.uuid4().hex  # the id server.log names it by
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        request.state.logged_error = exc  # the guard does not log it again
        return error_response(
            request, 500, f"The server had an error while processing your request (request id {ref}).", "server_error"
        )
