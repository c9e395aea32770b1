"""Run the app under uvicorn in this process, and record where it listens in server.json."""

from __future__ import annotations

import json
import logging
import os
import time

import uvicorn

from cortex.api.app import create_app
from cortex.config import Settings
from cortex.store.atomic import write_atomic


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; shutdown lets in-flight requests finish."""
    for sub in (settings.data_dir, settings.models_dir, settings.logs_dir):
        sub.mkdir(parents=True, exist_ok=True, mode=0o700)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=_loop(),
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    state = {"pid": os.getpid(), "host": settings.host, "port": settings.port, "started": int(time.time())}
    write_atomic(settings.server_file, json.dumps(state).encode(), mode=0o600)
    try:
        server.run()
    finally:
        try:
            if json.loads(settings.server_file.read_text()).get("pid") == os.getpid():
                settings.server_file.unlink()
        except (OSError, ValueError):
            pass
