"""The HTTP path's cuts (bench/http_path.py) keep every behaviour: the lean embeddings route is still a
documented FastAPI route whose errors are OpenAI's."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, Request, Response

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
