"""`GET /info`: the version, every stored model (and whether it is loaded), the engine kinds, and every
limit in force, so a client or an operator sees what this server serves and enforces without its config."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from cortex import __version__
from cortex.engine.kinds import KINDS
from cortex.hardware import precisions
from cortex.runtime.registry import ModelRegistry
from cortex.schemas import EngineKindInfo, Info, ModelObject

router = APIRouter(tags=["operations"])


@router.get("/info", response_model=Info, summary="Version, models, engine kinds and the limits in force")
async def info(request: Request) -> Info:
    state = request.app.state
    registry: ModelRegistry = state.registry
    records = await asyncio.to_thread(state.store.list)
    memory = {m.record.id: m.engine.memory_bytes() for m in registry.loaded()}
    return Info(
        version=__version__,
        models=[ModelObject.from_record(r, memory_bytes=memory.get(r.id)) for r in records],
        engines=[EngineKindInfo.from_kind(kind) for kind in KINDS.values()],
        precisions=precisions(),
        limits=state.settings.limits(),
    )
