"""Run the app under uvicorn in this process, and record where it listens in server.json."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator

import uvicorn

from cortex.api.app import create_app
from cortex.config import Settings, write_default_config
from cortex.store.atomic import write_atomic


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process would die of the signal
    before our clean-up runs. A graceful stop should clean up and exit 0, so handle them here."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; shutdown lets in-flight requests finish."""
    for sub in (settings.data_dir, settings.models_dir, settings.logs_dir):
        sub.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_default_config(settings)
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
    server = _Server(config)
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
