"""`/v1/models`: list, get, import, start (load), stop (unload), delete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from cortex.api.cancel import ClientGone, in_stoppable_thread, unless_disconnected
from cortex.api.errors import json_response
from cortex.api.sse import sse_event
from cortex.engine.kinds import ImportOptions, Progress
from cortex.errors import Cancelled, Conflict, CortexError, InvalidRequest, error_body
from cortex.importer import Importer
from cortex.runtime.registry import ModelRegistry
from cortex.schemas import DeleteResult, ImportProgress, ImportRequest, ModelList, ModelObject, ModelRef, StopResult
from cortex.store.builtin import BUILTINS, find_builtin
from cortex.store.ids import validate_model_id
from cortex.store.store import ModelRecord, ModelStore

router = APIRouter(tags=["models"])
log = logging.getLogger(__name__)


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _model_object(registry: ModelRegistry, record: ModelRecord) -> ModelObject:
    loaded = next((m for m in registry.loaded() if m.record.id == record.id), None)
    if loaded is None:
        return ModelObject.from_record(record)
    return ModelObject.from_record(record, memory_bytes=loaded.engine.memory_bytes(), expires_at=loaded.expires_at())


@router.get("/v1/models", response_model=ModelList, summary="List the models in the store")
async def list_models(request: Request) -> ModelList:
    registry = _registry(request)
    records = await asyncio.to_thread(_store(request).list)
    return ModelList(data=[_model_object(registry, r) for r in records])


@router.post(
    "/v1/models/import",
    response_model=ModelObject,
    summary="Import a GGUF file or a sentence-transformers folder into the store",
    description="With `stream: true` the answer is a server-sent event stream: `progress` events "
    '(`{"stage", "done", "total"}`), then one `done` event with the model object or one `error` event.',
)
async def import_model(body: ImportRequest, request: Request) -> Response:
    store = _store(request)
    store.require_writable()  # before the id checks and the event stream: a read-only server refuses first
    registry = _registry(request)
    importer: Importer = request.app.state.importer
    model_id = validate_model_id(body.model)
    name = body.name
    if body.model_path is not None:
        source: Path | Callable[[Path], None] = Path(body.model_path).expanduser()
    elif (builtin := find_builtin(model_id)) is not None:
        model_id = builtin.model_id
        source = builtin.source()
        name = name or builtin.name
    else:
        raise InvalidRequest(
            f"'model_path' is required: `{model_id}` is not a built-in model (built-in: {', '.join(BUILTINS)}).",
            param="model_path",
        )
    if store.folder(model_id).exists() or store.is_reserved(model_id):  # fast 409; the store reserves the id
        raise Conflict(f"A model with id `{model_id}` already exists or is being imported.", param="model")

    def run(stop: threading.Event, progress: Progress | None = None) -> ModelRecord:
        def step(stage: str, done: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled
            if progress is not None:
                progress(stage, done, total)

        options = ImportOptions(
            name=name, pooling=body.pooling, ctx_len=body.ctx_len, engine_options=body.engine_options()
        )
        return importer.run(model_id, source, options, engine=body.engine, progress=step)

    if not body.stream:
        try:
            record = await unless_disconnected(request, in_stoppable_thread(run))
        except ClientGone:
            return Response(status_code=499)
        return json_response(_model_object(registry, record).model_dump())
    access = {"model": model_id, "outcome": "cancelled"}  # the access log's line (see _import_events)
    request.state.access = access
    events = _import_events(run, registry, access, getattr(request.state, "request_id", ""))
    return StreamingResponse(events, media_type="text/event-stream")


async def _import_events(
    run: Callable[[threading.Event, Progress], ModelRecord], registry: ModelRegistry, access: dict, request_id: str
) -> AsyncIterator[bytes]:
    """Server-sent events for an import: progress as it goes, then `done` or `error`. A client that
    leaves stops the import (the generator is closed), which then leaves nothing in the store.

    The response's status is 200 before the import is done, so the access log's line says how it ended:
    `access["outcome"]` is `ok`, `error` (with `error`, the error event's code, or its type when it has
    none) or `cancelled` (the client left); a failure is also a line in server.log."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    def progress(stage: str, done: int, total: int) -> None:
        event = ImportProgress(stage=stage, done=done, total=total).model_dump()
        loop.call_soon_threadsafe(events.put_nowait, ("progress", event))

    async def work() -> None:
        try:
            record = await in_stoppable_thread(lambda stop: run(stop, progress))
            events.put_nowait(("done", _model_object(registry, record).model_dump()))
            access["outcome"] = "ok"
        except CortexError as exc:
            log.log(logging.ERROR if exc.status >= 500 else logging.WARNING, "import failed: %s", exc.message)
            access.update(outcome="error", error=exc.code or exc.type)
            events.put_nowait(("error", exc.to_dict()))
        except Exception:  # a bug: log it, tell the client without the detail but with the id the log names
            log.exception("import failed")
            access.update(outcome="error", error="server_error")
            message = f"The import failed: the server had an error (request id {request_id})."
            events.put_nowait(("error", error_body(message, type="server_error")))

    task = asyncio.create_task(work())
    try:
        while True:
            kind, data = await events.get()
            yield sse_event(kind, data)
            if kind != "progress":
                break
    finally:
        if not task.done():  # the client left mid-import
            log.info("import of a model stopped: its client went away")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@router.post("/v1/models/start", response_model=ModelObject, summary="Load a model into memory")
async def start_model(body: ModelRef, request: Request) -> ModelObject:
    registry = _registry(request)
    loaded = await registry.load(body.model)
    return _model_object(registry, loaded.record)


@router.post("/v1/models/stop", response_model=StopResult, summary="Unload a model from memory")
async def stop_model(body: ModelRef, request: Request) -> StopResult:
    registry = _registry(request)
    model_id = _store(request).resolve(body.model)
    return StopResult(id=model_id, was_loaded=await registry.unload(model_id))


@router.get("/v1/models/{model_id:path}", response_model=ModelObject, summary="Describe one model")
async def get_model(model_id: str, request: Request) -> ModelObject:
    record = _store(request).get(model_id)
    return _model_object(_registry(request), record)


@router.delete("/v1/models/{model_id:path}", response_model=DeleteResult, summary="Delete a model from the store")
async def delete_model(model_id: str, request: Request) -> DeleteResult:
    """Unloads the model once the requests that use it are done, then removes it. Requests that arrive
    meanwhile wait and then get 404 `model_not_found`."""
    _store(request).require_writable()  # before the unload: a refused delete leaves the model loaded
    return DeleteResult(id=await _registry(request).delete(model_id))
