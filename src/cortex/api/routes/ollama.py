"""Ollama's API (`/api/*`), so that Ollama's clients work by changing only the host: embed (and the legacy
embeddings), tags, ps, show, version, and pull as NDJSON progress. Errors are Ollama's `{"error": ...}`
(`cortex.api.errors.shaped`). Embeddings go through the same pipeline as /v1/embeddings
(`cortex.runtime.embed.embed_inputs`); names resolve through the store (`NAME:latest` included).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from cortex import __version__
from cortex.api.cancel import ClientGone, unless_disconnected
from cortex.api.errors import json_response
from cortex.api.protocol import check_dimensions, check_inputs, parse_body
from cortex.errors import InvalidRequest
from cortex.hub.resolve import Plan
from cortex.hub.tasks import FINAL, PullManager, PullTask
from cortex.runtime.embed import embed_inputs
from cortex.runtime.registry import LoadedModel, ModelRegistry
from cortex.schemas import (
    OllamaDetails,
    OllamaEmbeddingsRequest,
    OllamaEmbeddingsResponse,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaModel,
    OllamaModelRef,
    OllamaProgress,
    OllamaPs,
    OllamaPullRequest,
    OllamaRunning,
    OllamaShow,
    OllamaTags,
    OllamaVersion,
)
from cortex.store.store import ModelRecord, ModelStore

router = APIRouter(prefix="/api", tags=["ollama"])
# What /api/show lists per task: Ollama names an embedding model's "embedding"; it has no rerank models.
_CAPABILITY = {"embed": "embedding", "rerank": "rerank"}
_FOREVER = timedelta(days=365 * 100)  # a kept model's expires_at: Ollama's CLI shows "Forever" beyond 20 years


def _body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that parses its own (see cortex.api.protocol.parse_body)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _store(request: Request) -> ModelStore:
    return request.app.state.store


async def _embed(
    request: Request, model_id: str, inputs: list[str], keep_alive_s: float | None, *, truncate: bool,
    dimensions: int | None = None, normalize: bool | None = None,
) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """Vectors, tokens, and the nanoseconds until the model was ready. No inputs only loads the model (as
    Ollama does); `keep_alive_s` None gives the model the server's keep-alive again, as Ollama's default does.
    `normalize` None: the model's own (sentence-transformers' Normalize module)."""
    started = time.perf_counter_ns()
    settings = request.app.state.settings
    if inputs:
        check_inputs(inputs, settings.max_inputs)
    registry = _registry(request)
    keep = "default" if keep_alive_s is None else keep_alive_s
    access = {"model": model_id, "inputs": len(inputs)}
    request.state.access = access
    async with registry.use(model_id, keep_alive_s=keep) as model:
        ready_ns = time.perf_counter_ns() - started
        if not inputs:
            return np.zeros((0, model.engine.n_embd), dtype=np.float32), 0, ready_ns
        check_dimensions(dimensions, model.engine.n_embd)
        work = embed_inputs(
            model,
            inputs,
            truncate=truncate,
            max_tokens=settings.max_tokens_per_request,
            normalize=normalize,
            dimensions=dimensions,
        )
        try:  # a client that leaves has its inputs dropped from the queue, as on /v1/embeddings
            vectors, n_tokens = await unless_disconnected(request, work)
        except ClientGone:
            access["disconnected"] = True
            raise
    access["tokens"] = n_tokens
    return vectors, n_tokens, ready_ns


@router.post(
    "/embed", response_model=OllamaEmbedResponse, openapi_extra=_body(OllamaEmbedRequest), summary="Embed (Ollama)"
)
async def embed(request: Request) -> Response:
    started = time.perf_counter_ns()
    req = parse_body(await request.body(), OllamaEmbedRequest)
    try:
        vectors, n_tokens, ready_ns = await _embed(
            request,
            req.model,
            req.inputs(),
            req.keep_alive,
            truncate=req.truncate,
            dimensions=req.dimensions,
            normalize=True,  # Ollama's /api/embed always answers unit vectors
        )
    except ClientGone:
        return Response(status_code=499)
    body = {
        "model": req.model,
        "embeddings": vectors.astype("<f4", copy=False),
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": ready_ns,
        "prompt_eval_count": n_tokens,
    }
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.post(
    "/embeddings",
    response_model=OllamaEmbeddingsResponse,
    openapi_extra=_body(OllamaEmbeddingsRequest),
    summary="Embed one prompt (Ollama's legacy route)",
    description="No `truncate` here, as in Ollama: a prompt longer than the context is a 400 unless the server "
    "runs with auto_truncate. An empty prompt only loads the model.",
)
async def embeddings(request: Request) -> Response:
    req = parse_body(await request.body(), OllamaEmbeddingsRequest)
    inputs = [req.prompt] if req.prompt else []
    truncate = request.app.state.settings.auto_truncate
    try:
        vectors, _, _ = await _embed(request, req.model, inputs, req.keep_alive, truncate=truncate)
    except ClientGone:
        return Response(status_code=499)
    embedding = vectors[0].astype("<f4", copy=False) if len(vectors) else []
    body = orjson.dumps({"embedding": embedding}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


def _rfc3339(when: float | datetime) -> str:
    """A Unix time or an aware datetime as RFC 3339 in UTC, to the second (as Go's time.Time reads it)."""
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _details(record: ModelRecord) -> OllamaDetails:
    return OllamaDetails(
        format="gguf" if any(f.endswith(".gguf") for f in record.files) else "onnx",
        family=record.architecture,
        families=[record.architecture],
        quantization_level=(record.outtype or record.precision or "").upper(),
    )


def _model(record: ModelRecord) -> dict:
    """The fields /api/tags and /api/ps share. The digest hashes the stored record (Ollama's hashes its
    manifest): it changes when the model is replaced, and costs no read of the weights."""
    return {
        "name": record.id,
        "model": record.id,
        "modified_at": _rfc3339(record.created),
        "size": record.size,
        "digest": hashlib.sha256(record.model_dump_json().encode()).hexdigest(),
        "details": _details(record),
    }


@router.get("/tags", response_model=OllamaTags, summary="The stored models (Ollama)")
@router.head("/tags", include_in_schema=False)  # as Ollama: clients probe a server with HEAD
async def tags(request: Request) -> OllamaTags:
    records = await asyncio.to_thread(_store(request).list)
    return OllamaTags(models=[OllamaModel(**_model(r)) for r in records])


def _expires(model: LoadedModel) -> datetime:
    """When the model unloads; a model kept loaded gets a date a century ahead, as Ollama's "forever" is."""
    expires = model.expires_at()
    return datetime.now(UTC) + _FOREVER if expires is None else datetime.fromtimestamp(expires, UTC)


@router.get("/ps", response_model=OllamaPs, summary="The loaded models and when each unloads (Ollama)")
async def ps(request: Request) -> OllamaPs:
    loaded = sorted(((_expires(m), m) for m in _registry(request).loaded()), key=lambda e: e[0], reverse=True)
    running = [
        OllamaRunning(
            **_model(m.record) | {"size": m.engine.memory_bytes()},
            expires_at=_rfc3339(expires),
            context_length=m.engine.n_ctx,
        )
        for expires, m in loaded  # the longest left first, as Ollama lists them
    ]
    return OllamaPs(models=running)


def _named(ref: OllamaModelRef) -> str:
    name = ref.model or ref.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    return name


@router.post("/show", response_model=OllamaShow, openapi_extra=_body(OllamaModelRef), summary="Describe a model")
async def show(request: Request) -> OllamaShow:
    record = _store(request).get(_named(parse_body(await request.body(), OllamaModelRef)))
    arch = record.architecture
    info = {
        "general.architecture": arch,
        "general.name": record.name,
        f"{arch}.embedding_length": record.n_embd,
        f"{arch}.context_length": record.n_ctx_train,
        "cortex.ctx_len": record.ctx_len,  # the most tokens per input it serves (at most the training context)
        "cortex.engine": record.engine,
        "cortex.pooling": record.pooling,
    }
    return OllamaShow(
        details=_details(record),
        model_info=info,
        capabilities=[_CAPABILITY[record.task]],
        modified_at=_rfc3339(record.created),
    )


@router.get("/version", response_model=OllamaVersion, summary="The server's version (cortex's)")
@router.head("/version", include_in_schema=False)
async def version() -> OllamaVersion:
    return OllamaVersion(version=__version__)


@router.post(
    "/pull",
    response_model=OllamaProgress,
    openapi_extra=_body(OllamaPullRequest),
    summary="Pull a model, with Ollama's NDJSON progress",
    description="Takes cortex's pull names (NAME[:TAG], ORG/REPO[:QUANT], a URL); `NAME:latest` pulls NAME's "
    "default variant. Lines: `pulling manifest`, per file `pulling <digest>` with `total` and `completed`, "
    "`verifying sha256 digest`, `writing manifest`, `success`; a failure is an `error` line. With `stream: "
    "false`, one final object. A client that leaves pauses the pull: the next pull resumes it.",
)
async def pull(request: Request) -> Response:
    req = parse_body(await request.body(), OllamaPullRequest)
    name = _named(req).removesuffix(":latest")
    pulls: PullManager = request.app.state.pulls
    task = await pulls.start(name)  # a name the hub does not know fails here, as a status and an error body
    request.state.access = {"model": task.model}
    lines = _paused_if_left(pulls, task, _progress(task))
    if req.stream:
        return StreamingResponse(
            (orjson.dumps(line) + b"\n" async for line in lines), media_type="application/x-ndjson"
        )

    async def last() -> dict:
        final: dict = {}
        async for line in lines:
            final = line
        return final

    try:
        final = await unless_disconnected(request, last())
    except ClientGone:
        return Response(status_code=499)
    return json_response(final, 500 if "error" in final else 200)


async def _paused_if_left(pulls: PullManager, task: PullTask, lines: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """`lines`; if the client leaves before the pull ends, the pull is paused (Ollama stops its download
    then): its partial files are kept for the next pull to resume."""
    try:
        async for line in lines:
            yield line
    finally:
        if task.status not in FINAL:
            pulls.cancel(task.id, keep_partial=True)


async def _progress(task: PullTask) -> AsyncIterator[dict]:
    """The task's progress as Ollama's pull lines, until it ends."""
    yield {"status": "pulling manifest"}
    sent: dict[str, int] = {}
    verifying = False
    while True:
        task.changed.clear()
        status = task.status
        if task.plan is not None:
            for line in _file_lines(task.plan, task.done_bytes, sent):
                yield line
        if status in ("importing", "done") and not verifying:
            verifying = True
            yield {"status": "verifying sha256 digest"}
        if status == "done":
            yield {"status": "writing manifest"}
            yield {"status": "success"}
            return
        if status in FINAL:
            yield {"error": _ended(task)}
            return
        await task.changed.wait()


def _file_lines(plan: Plan, done_bytes: int, sent: dict[str, int]) -> list[dict]:
    """A `pulling <digest>` line for each file whose progress changed since the last lines (`sent`)."""
    lines = []
    start = 0
    for remote in plan.files:  # a task downloads them in this order: done_bytes counts them one after another
        completed = min(max(done_bytes - start, 0), remote.size)
        started = done_bytes > start or (remote.size == 0 and done_bytes >= start)
        start += remote.size
        if not started or sent.get(remote.path) == completed:
            continue
        sent[remote.path] = completed
        digest = f"sha256:{remote.sha256}" if remote.sha256 else remote.path  # small git files have no LFS sha
        short = remote.sha256[:12] if remote.sha256 else remote.path
        line = OllamaProgress(status=f"pulling {short}", digest=digest, total=remote.size, completed=completed)
        lines.append(line.model_dump())
    return lines


def _ended(task: PullTask) -> str:
    if task.error is not None:
        return task.error["error"]["message"]
    if task.status == "paused":
        return "The pull was paused (the server is stopping); pull again to resume it."
    return "The pull was cancelled."
