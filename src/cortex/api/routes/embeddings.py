"""`POST /v1/embeddings`: parse -> find the model -> check -> embed -> encode."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cortex.api.cancel import ClientGone, unless_disconnected
from cortex.api.lean_route import LeanRoute
from cortex.api.protocol import (
    check_dimensions,
    check_inputs,
    encode_embeddings,
    parse_embedding_request,
)
from cortex.runtime.embed import embed_inputs
from cortex.runtime.registry import ModelRegistry
from cortex.schemas import EmbeddingRequest, EmbeddingResponse

router = APIRouter(tags=["embeddings"], route_class=LeanRoute)  # the endpoint called directly: see LeanRoute

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
    async with registry.use(req.model) as model:
        check_dimensions(req.dimensions, model.engine.n_embd)
        access = {"model": req.model, "inputs": len(inputs)}
        request.state.access = access
        truncate = settings.auto_truncate if req.truncate is None else req.truncate
        work = embed_inputs(
            model,
            inputs,
            truncate=truncate,
            max_tokens=settings.max_tokens_per_request,
            normalize=req.normalize,
            dimensions=req.dimensions,
            prompt_name=req.prompt_name,
        )
        try:  # a client that leaves has its inputs dropped from the queue: nothing is computed for it
            vectors, n_tokens = await unless_disconnected(request, work)
        except ClientGone:
            access["disconnected"] = True
            return Response(status_code=499)
    access["tokens"] = n_tokens
    body = encode_embeddings(vectors, model=req.model, prompt_tokens=n_tokens, encoding_format=req.encoding_format)
    return Response(body, media_type="application/json")
