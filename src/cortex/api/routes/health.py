"""Liveness and readiness, open without an API key (probes of orchestrators send none) but under the
same Host rules as every route: `/healthz` (the CLI's: pid, version, folder id) and `/health` answer as
soon as the server accepts requests; `/ready` once every model of `preload_models` is loaded."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request

from cortex import __version__
from cortex.errors import CortexError, NotReady
from cortex.schemas import Health, Ready
from cortex.store.store import ModelStore

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    return Health(pid=os.getpid(), version=__version__, data_folder=request.app.state.folder_id)


@router.get("/health", response_model=Health, summary="Alive: the server accepts requests")
async def health(request: Request) -> Health:
    return await healthz(request)


@router.get(
    "/ready",
    response_model=Ready,
    summary="Ready: every model of preload_models is loaded",
    responses={503: {"description": "Not yet, or a model failed to load (the error says which)"}},
)
async def ready(request: Request) -> Ready:
    state = request.app.state
    loaded = {m.record.id for m in state.registry.loaded()}
    failed: dict[str, str] = state.preload_failed
    for name in [n for n in failed if _loaded(state.store, n, loaded)]:  # loaded since (imported, then used)
        del failed[name]
    if failed:
        name, why = next(iter(failed.items()))
        raise NotReady(f"The preloaded model `{name}` failed to load: {why}")
    waiting = [name for name in state.settings.preload_models if not _loaded(state.store, name, loaded)]
    if waiting:
        raise NotReady(f"Loading {', '.join(waiting)} (preload_models).")
    return Ready(models=sorted(loaded))


def _loaded(store: ModelStore, name: str, loaded: set[str]) -> bool:
    try:
        return store.resolve(name) in loaded
    except CortexError:  # an id that does not resolve: the preload's failure says why
        return False
