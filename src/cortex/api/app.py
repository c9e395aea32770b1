"""The ASGI app. Its lifespan owns the store and the registry: no module-level state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.routing import Mount, Route

from cortex import __version__
from cortex.api.errors import install_error_handlers
from cortex.api.routes import embeddings, hardware, health, info, metrics, models, ollama, pull, rerank, tokenize
from cortex.config import Settings
from cortex.data_folder import folder_id
from cortex.errors import CortexError
from cortex.hardware import hardware_report, summary
from cortex.hub.tasks import PullManager
from cortex.importer import Importer
from cortex.metrics import Metrics
from cortex.runtime.registry import ModelRegistry
from cortex.store.store import ModelStore

log = logging.getLogger("cortex")


async def _log_hardware() -> None:
    log.info("hardware: %s", summary(await asyncio.to_thread(hardware_report)))


async def _preload(registry: ModelRegistry, names: list[str], failed: dict[str, str]) -> None:
    """Load `names` one after another (the server answers meanwhile); a model that cannot load is
    logged and kept in `failed` with the reason, which GET /ready reports."""
    for name in names:
        try:
            await registry.load(name)
        except CortexError as exc:
            failed[name] = exc.message
            log.error("preload of %s failed: %s", name, exc.message)


def create_app(settings: Settings, *, read_only: bool = False) -> FastAPI:
    """A cortex app serving the store under `settings.data_dir` (`read_only`: as it is, see ModelStore)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = ModelStore(settings.models_dir, min_free_bytes=settings.min_free_disk_bytes, read_only=read_only)
        importer = Importer(store, settings.default_ctx_len)
        registry = ModelRegistry(store, settings, meter=app.state.metrics.meter)
        pulls = PullManager(importer)
        app.state.folder_id = folder_id(settings.data_dir)
        app.state.settings = settings
        app.state.store = store
        app.state.importer = importer
        app.state.registry = registry
        app.state.pulls = pulls
        app.state.preload_failed = {}
        app.state.metrics.watch(registry)
        report = asyncio.create_task(_log_hardware())  # in the background: start-up does not wait for it
        preload = asyncio.create_task(_preload(registry, settings.preload_models, app.state.preload_failed))
        try:
            yield
        finally:
            report.cancel()
            preload.cancel()
            await pulls.pause_all()  # partial downloads are kept for the next pull to resume
            await registry.close()
            app.state.metrics.watch(None)

    # /docs and /redoc with their scripts served from the package (fastapi-offline), not from a CDN:
    # a local server's documentation must load without a network.
    app = FastAPIOffline(
        title="cortex",
        version=__version__,
        description="A local, OpenAI-compatible model server.",
        lifespan=lifespan,
        static_url="/docs/assets",
    )
    install_error_handlers(app)
    routers = (
        health.router,
        hardware.router,
        embeddings.router,
        rerank.router,
        tokenize.router,
        pull.router,  # before models: /v1/models/pull/... must not match /v1/models/{id}
        models.router,
        ollama.router,
        metrics.router,
        info.router,
    )
    for router in routers:
        app.include_router(router)
    # Made here, not in the lifespan: the guard, built before the lifespan runs (cortex.api.server), counts
    # requests with it. It names routes by their templates: the app's own (docs), then the included ones.
    own = [route for route in app.routes if isinstance(route, Route | Mount)]
    app.state.metrics = Metrics([*own, *(route for router in routers for route in router.routes)])
    return app
