"""The ASGI app. Its lifespan owns the store and the registry: no module-level state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cortex import __version__
from cortex.api.errors import install_error_handlers
from cortex.api.routes import embeddings, health, models, pull
from cortex.config import Settings
from cortex.hub.tasks import PullManager
from cortex.runtime.registry import ModelRegistry
from cortex.store.store import ModelStore

log = logging.getLogger("cortex")


def create_app(settings: Settings) -> FastAPI:
    """A cortex app serving the store under `settings.data_dir`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = ModelStore(settings.models_dir, default_ctx_len=settings.default_ctx_len)
        registry = ModelRegistry(store, settings)
        pulls = PullManager(store, settings.min_free_disk_bytes)
        app.state.settings = settings
        app.state.store = store
        app.state.registry = registry
        app.state.pulls = pulls
        try:
            yield
        finally:
            await pulls.pause_all()  # partial downloads are kept for the next pull to resume
            await registry.close()

    app = FastAPI(
        title="cortex",
        version=__version__,
        description="A local, OpenAI-compatible model server.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(embeddings.router)
    app.include_router(pull.router)  # before models: /v1/models/pull/... must not match /v1/models/{id}
    app.include_router(models.router)
    return app
