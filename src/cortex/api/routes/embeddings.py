"""`POST /v1/embeddings`: parse -> find the model -> check -> embed -> encode."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from cortex.api.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    check_dimensions,
    check_inputs,
    encode_embeddings,
    parse_embedding_request,
    truncate_dimensions,
)
from cortex.runtime.embed import embed_inputs
from cortex.runtime.registry import ModelRegistry
from cortex.store.ids import validate_model_id

router = APIRouter(tags=["embeddings"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
    },
}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    openapi_extra={"requestBody": _REQUEST_BODY},
    summary="Create embeddings (OpenAI-compatible)",
)
async def create_embeddings(request: Request) -> Response:
    req = parse_embedding_request(await request.body())
    inputs = req.inputs()
    settings = request.app.state.settings
    check_inputs(inputs, settings.max_inputs)
    registry: ModelRegistry = request.app.state.registry
    model = await registry.get(validate_model_id(req.model))
    check_dimensions(req.dimensions, model.engine.n_embd)
    access = {"model": req.model, "inputs": len(inputs)}
    request.state.access = access
    work = asyncio.ensure_future(
        embed_inputs(model, inputs, truncate=req.truncate, max_tokens=settings.max_tokens_per_request)
    )
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():  # the client went away: drop its inputs from the queue, compute nothing
            work.cancel()
    if not work.done() or work.cancelled():
        access["disconnected"] = True
        return Response(status_code=499)
    vectors, n_tokens = work.result()
    access["tokens"] = n_tokens
    vectors = truncate_dimensions(vectors, req.dimensions)
    body = encode_embeddings(vectors, model=req.model, prompt_tokens=n_tokens, encoding_format=req.encoding_format)
    return Response(body, media_type="application/json")


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read; only a disconnect can follow)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
