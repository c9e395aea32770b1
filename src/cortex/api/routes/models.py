"""`/v1/models`: list, get, import, start (load), stop (unload), delete."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from cortex.errors import InvalidRequest
from cortex.runtime.registry import ModelRegistry
from cortex.store.builtin import BUILTINS
from cortex.store.ids import validate_model_id
from cortex.store.store import ModelRecord, ModelStore

router = APIRouter(tags=["models"])


class ModelObject(BaseModel):
    """OpenAI's model object, with cortex's own fields after the standard four."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "cortex"
    name: str
    engine: str
    architecture: str
    pooling: str
    ctx_len: int
    n_embd: int
    size: int
    status: Literal["loaded", "stored"]
    memory_bytes: int | None = Field(None, description="Bytes held in memory while loaded")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="A model id in the store")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="Id to give the model, NAME[:TAG]")
    model_path: str | None = Field(
        None,
        description="A GGUF file on the server's machine; omit it for a built-in model such as gemma3:270m",
    )
    name: str | None = Field(None, description="Display name; defaults to the GGUF's general.name")
    pooling: Literal["mean", "cls", "last"] | None = Field(
        None, description="Overrides the GGUF's pooling; models that declare none get mean"
    )
    ctx_len: int | None = Field(None, gt=0, description="Most tokens per input; capped by the model's training context")


class StopResult(BaseModel):
    id: str
    status: Literal["stored"] = "stored"
    was_loaded: bool


class DeleteResult(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _model_object(registry: ModelRegistry, record: ModelRecord) -> ModelObject:
    loaded = next((m for m in registry.loaded() if m.record.id == record.id), None)
    return ModelObject(
        id=record.id,
        created=record.created,
        name=record.name,
        engine=record.engine,
        architecture=record.architecture,
        pooling=record.pooling,
        ctx_len=record.ctx_len,
        n_embd=record.n_embd,
        size=record.size,
        status="loaded" if loaded else "stored",
        memory_bytes=loaded.engine.memory_bytes() if loaded else None,
    )


@router.get("/v1/models", response_model=ModelList, summary="List the models in the store")
async def list_models(request: Request) -> ModelList:
    registry = _registry(request)
    records = await asyncio.to_thread(_store(request).list)
    return ModelList(data=[_model_object(registry, r) for r in records])


@router.post("/v1/models/import", response_model=ModelObject, summary="Import a GGUF file into the store")
async def import_model(body: ImportRequest, request: Request) -> ModelObject:
    store = _store(request)
    model_id = validate_model_id(body.model)
    name = body.name
    if body.model_path is not None:
        source = Path(body.model_path).expanduser()
    elif model_id in BUILTINS:
        source = BUILTINS[model_id].writer()
        name = name or BUILTINS[model_id].name
    else:
        raise InvalidRequest(
            f"'model_path' is required: `{model_id}` is not a built-in model (built-in: {', '.join(BUILTINS)}).",
            param="model_path",
        )
    record = await asyncio.to_thread(
        store.import_gguf,
        model_id,
        source,
        name=name,
        pooling=body.pooling,
        ctx_len=body.ctx_len,
    )
    return _model_object(_registry(request), record)


@router.post("/v1/models/start", response_model=ModelObject, summary="Load a model into memory")
async def start_model(body: ModelRef, request: Request) -> ModelObject:
    registry = _registry(request)
    loaded = await registry.load(validate_model_id(body.model))
    return _model_object(registry, loaded.record)


@router.post("/v1/models/stop", response_model=StopResult, summary="Unload a model from memory")
async def stop_model(body: ModelRef, request: Request) -> StopResult:
    registry = _registry(request)
    record = _store(request).get(validate_model_id(body.model))
    return StopResult(id=record.id, was_loaded=await registry.unload(record.id))


@router.get("/v1/models/{model_id:path}", response_model=ModelObject, summary="Describe one model")
async def get_model(model_id: str, request: Request) -> ModelObject:
    record = _store(request).get(validate_model_id(model_id))
    return _model_object(_registry(request), record)


@router.delete("/v1/models/{model_id:path}", response_model=DeleteResult, summary="Delete a model from the store")
async def delete_model(model_id: str, request: Request) -> DeleteResult:
    registry = _registry(request)
    store = _store(request)
    record = store.get(validate_model_id(model_id))
    await registry.unload(record.id)
    await asyncio.to_thread(store.delete, record.id)
    return DeleteResult(id=record.id)
