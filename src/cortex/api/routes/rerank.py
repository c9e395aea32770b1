"""Rerank routes, each in the shape its clients send: parse -> find the rerank model -> score -> respond.

- `POST /v1/rerank` (and llama-server's alias `/v1/reranking`): Jina's and llama-server's shape.
- `POST /v2/rerank`: what the Cohere SDK's `ClientV2.rerank` sends; long pairs are cut, as Cohere does.
- `POST /rerank`: text-embeddings-inference's shape (`texts`); a body with `documents` instead is answered in
  the Jina shape, as llama-server's `/rerank` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from cortex.api.cancel import ClientGone, unless_disconnected
from cortex.api.protocol import load_object, parse_request
from cortex.runtime.registry import ModelRegistry
from cortex.runtime.rerank import Ranked, check_rerank, rank, score_pairs
from cortex.schemas import (
    CohereMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereRerankResult,
    CohereTokens,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TeiRank,
    TeiRerankRequest,
    Usage,
)

router = APIRouter(tags=["rerank"])

_MESSAGES = {
    "model": "'model' must be a string naming a rerank model in the store.",
    "query": "'query' must be a string.",
    "documents": "'documents' must be an array of strings, or of objects with a string 'text'.",
    "texts": "'texts' must be an array of strings.",
    "top_n": "'top_n' must be a positive integer.",
    "max_tokens_per_doc": "'max_tokens_per_doc' must be a positive integer.",
    "return_documents": "'return_documents' must be true or false.",
    "return_text": "'return_text' must be true or false.",
    "raw_scores": "'raw_scores' must be true or false.",
    "truncate": "'truncate' must be true or false.",
    "truncation_direction": "'truncation_direction' must be 'Right': only the end of a pair is cut.",
}


def _body(schema: type[BaseModel]) -> dict:
    schema_json = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"required": True, "content": {"application/json": {"schema": schema_json}}}


async def _score(
    request: Request,
    model_id: str,
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None,
    raw: bool,
    truncate: bool | None,
    docs_param: str = "documents",
    doc_tokens: int | None = None,
) -> tuple[list[Ranked], int] | None:
    """The ranked documents and the tokens of all pairs, or None if the client went away meanwhile."""
    settings = request.app.state.settings
    check_rerank(query, documents, max_documents=settings.max_inputs, top_n=top_n, docs_param=docs_param)
    registry: ModelRegistry = request.app.state.registry
    async with registry.use(model_id, task="rerank") as model:
        access = {"model": model_id, "inputs": len(documents)}
        request.state.access = access
        work = score_pairs(
            model,
            query,
            documents,
            truncate=settings.auto_truncate if truncate is None else truncate,
            raw=raw,
            max_tokens=settings.max_tokens_per_request,
            doc_tokens=doc_tokens,
            docs_param=docs_param,
        )
        try:  # a client that leaves has its pairs dropped from the queue
            scores, n_tokens = await unless_disconnected(request, work)
        except ClientGone:
            access["disconnected"] = True
            return None
    access["tokens"] = n_tokens
    return rank(scores, top_n), n_tokens


def _json(body: BaseModel | list[BaseModel]) -> Response:
    """`body` as JSON without its unset optional fields (`document`, `text`)."""
    rows = body if isinstance(body, list) else [body]
    dumped = [b.model_dump(exclude_none=True) for b in rows]
    data = dumped if isinstance(body, list) else dumped[0]
    return Response(orjson.dumps(data), media_type="application/json")


async def _jina(request: Request, req: RerankRequest) -> Response:
    texts = req.texts()
    out = await _score(request, req.model, req.query, texts, top_n=req.top_n, raw=req.raw_scores, truncate=req.truncate)
    if out is None:
        return Response(status_code=499)
    ranked, n_tokens = out
    results = [
        RerankResult(
            index=r.index,
            relevance_score=r.score,
            document=RerankDocument(text=texts[r.index]) if req.return_documents else None,
        )
        for r in ranked
    ]
    usage = Usage(prompt_tokens=n_tokens, total_tokens=n_tokens)
    return _json(RerankResponse(model=req.model, results=results, usage=usage))


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    openapi_extra={"requestBody": _body(RerankRequest)},
    summary="Rerank documents for a query (Jina / llama-server)",
)
@router.post("/v1/reranking", include_in_schema=False)  # llama-server's alias
async def rerank_v1(request: Request) -> Response:
    return await _jina(request, parse_request(load_object(await request.body()), RerankRequest, _MESSAGES))


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    openapi_extra={"requestBody": _body(CohereRerankRequest)},
    summary="Rerank documents for a query (Cohere v2)",
)
async def rerank_v2(request: Request) -> Response:
    req = parse_request(load_object(await request.body()), CohereRerankRequest, _MESSAGES)
    out = await _score(request, req.model, req.query, req.documents, top_n=req.top_n, raw=req.raw_scores,
                       truncate=req.truncate, doc_tokens=req.max_tokens_per_doc)  # fmt: skip
    if out is None:
        return Response(status_code=499)
    ranked, n_tokens = out
    results = [CohereRerankResult(index=r.index, relevance_score=r.score) for r in ranked]
    meta = CohereMeta(tokens=CohereTokens(input_tokens=n_tokens))
    return _json(CohereRerankResponse(id=str(uuid.uuid4()), results=results, meta=meta))


@router.post(
    "/rerank",
    response_model=list[TeiRank],
    response_model_exclude_none=True,
    openapi_extra={"requestBody": _body(TeiRerankRequest)},
    summary="Rerank texts for a query (text-embeddings-inference)",
)
async def rerank_tei(request: Request) -> Response:
    data = load_object(await request.body())
    if "texts" not in data and "documents" in data:  # llama-server's /rerank takes Jina's shape too
        return await _jina(request, parse_request(data, RerankRequest, _MESSAGES))
    req = parse_request(data, TeiRerankRequest, _MESSAGES)
    model_id = req.model if req.model is not None else request.app.state.registry.implied("rerank")
    out = await _score(request, model_id, req.query, req.texts, top_n=None, raw=req.raw_scores,
                       truncate=req.truncate, docs_param="texts")  # fmt: skip
    if out is None:
        return Response(status_code=499)
    ranked, _ = out
    return _json([TeiRank(index=r.index, score=r.score, text=req.texts[r.index] if req.return_text else None)
                  for r in ranked])  # fmt: skip
