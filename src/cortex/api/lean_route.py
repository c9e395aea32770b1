"""A FastAPI route for endpoints that take the Request alone and return a Response, called directly.

Such an endpoint (the embeddings routes: they parse their bodies themselves, see cortex.api.protocol) uses
nothing of FastAPI's request handler, yet that handler costs every request its dependency solving, a
body check, telemetry hooks and two exit stacks: on a one-input request it was the largest share of the
Python work per request (bench/http_path.py --profile). With `LeanRoute` the route stays a FastAPI route
(matched, documented in /openapi.json, its exceptions mapped by the app's handlers in OpenAI's shape, its
template the metrics' label); only the handler between Starlette and the endpoint is skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class LeanRoute(APIRoute):
    """An APIRoute whose endpoint is `async def endpoint(request: Request) -> Response`, called as it is.

    Use it as an APIRouter's `route_class`; an endpoint of any other signature is refused at start-up."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        params = list(inspect.signature(endpoint).parameters.values())
        if (
            not inspect.iscoroutinefunction(endpoint)
            or len(params) != 1
            or params[0].annotation not in (Request, "Request")
            or self.dependant.dependencies
        ):
            raise TypeError(f"LeanRoute {self.path}: the endpoint must be `async def f(request: Request) -> Response`")
        return endpoint
