"""Run the app under uvicorn in this process, holding its data folder's lock, and record where it listens in
server.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from cortex.api.app import create_app
from cortex.api.guard import Guard, is_loopback_host
from cortex.api.http_protocol import GuardedHttpToolsProtocol
from cortex.config import Settings, write_default_config
from cortex.data_folder import lock_folder, writable
from cortex.errors import ShuttingDown
from cortex.logs import configure as configure_logging
from cortex.store.atomic import write_atomic


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process would die of the signal
    before our clean-up runs. A graceful stop should clean up and exit 0, so handle them here.

    `on_exit` runs at the signal itself, before uvicorn waits for open connections: it pauses running
    pulls, which ends their progress streams, so they do not hold the shutdown for the grace period.

    `on_grace_ending` runs shortly before the grace period ends (see `_shed_delay`): what is still queued
    then could not finish in time and gets a clean 503 instead of being cut off when the grace runs out."""

    def __init__(
        self, config: uvicorn.Config, on_exit: Callable[[], None], on_grace_ending: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._on_grace_ending = on_grace_ending

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown  # counted from now by uvicorn too; None: no limit
        loop = asyncio.get_running_loop()
        timer = None if grace is None else loop.call_later(_shed_delay(grace), self._on_grace_ending)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:  # all finished in time: nothing to shed
                timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _shed_delay(grace: float) -> float:
    """When to fail what is still queued: a margin before the grace ends (a quarter of it, at most 2 s)
    lets the 503s be written and the batches already running finish before uvicorn cancels requests."""
    return grace - min(2.0, grace / 4)


class ExposureError(Exception):
    """The server would listen beyond loopback without a key."""


def check_exposure(settings: Settings) -> list[str]:
    """Refuse a non-loopback bind without an API key (unless `insecure`); return warnings to print."""
    if is_loopback_host(settings.host):
        return []
    if not settings.all_api_keys() and not settings.insecure:
        raise ExposureError(
            f"Refusing to listen on {settings.host} without an API key: anyone who can reach this machine could "
            "use it. Set one with --api-key KEY, --api-key-file FILE or CORTEX_API_KEY, or pass --insecure if "
            "a gateway in front of cortex controls access."
        )
    if settings.ssl_certfile is None:
        return [
            f"Listening on {settings.host} without TLS: API keys and data travel in clear text "
            "(--ssl-certfile/--ssl-keyfile to encrypt)."
        ]
    return []


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; shutdown lets in-flight requests finish within the grace period.

    A writable data folder is locked for the server's life before its store is opened (and swept):
    raises FolderInUse if another server holds it. A data folder this process cannot write is served
    read-only: nothing is written there (no chmod, config.yml, logs or server.json, so the CLI cannot
    find this server), nothing is swept, and imports, pulls and deletes are refused.
    """
    warnings = check_exposure(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_only = not writable(settings.data_dir, settings.models_dir)
    with contextlib.ExitStack() as held:
        if not read_only:
            held.callback(os.close, lock_folder(settings.data_dir))
            _prepare_folder(settings)
        _start_logging(settings, warnings, read_only)
        server = _uvicorn_server(settings, read_only)
        if not read_only:
            held.enter_context(_server_record(settings))
        server.run()


def _start_logging(settings: Settings, warnings: list[str], read_only: bool) -> None:
    configure_logging(settings.log_level, None if read_only else settings.logs_dir)
    log = logging.getLogger("cortex")
    for warning in warnings:
        log.warning(warning)
    if read_only:
        log.warning(
            "data folder %s is read-only: serving its models read-only (imports, pulls and deletes are refused)",
            settings.data_dir,
        )


def guarded_app(settings: Settings, *, read_only: bool) -> Guard:
    """cortex's app behind its Guard (API keys, Host/Origin rules, body limits, access log): what every way of
    serving cortex runs, `cortex start` here and each Ray Serve replica (cortex.scale.ray_serve)."""
    app = create_app(settings, read_only=read_only)
    return Guard(app, settings, logs_dir=None if read_only else settings.logs_dir, metrics=app.state.metrics)


def _uvicorn_server(settings: Settings, read_only: bool) -> _Server:
    guard = guarded_app(settings, read_only=read_only)
    app = guard.app
    config = uvicorn.Config(
        guard,
        host=settings.host,
        port=settings.port,
        loop=_loop(),
        http=GuardedHttpToolsProtocol,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through cortex.logs' handlers, request ids included
        access_log=False,
        timeout_keep_alive=int(max(1, settings.keepalive_timeout_s)),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    config.cortex_limits = settings  # read by GuardedHttpToolsProtocol
    return _Server(
        config,
        on_exit=lambda: app.state.pulls.pause_running() if hasattr(app.state, "pulls") else None,
        on_grace_ending=lambda: app.state.registry.shed(ShuttingDown()) if hasattr(app.state, "registry") else None,
    )


def _prepare_folder(settings: Settings) -> None:
    """The data folder's layout, private to its owner, with a commented config.yml."""
    for sub in (settings.models_dir, settings.logs_dir):
        sub.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data_dir, 0o700)
    write_default_config(settings)


@contextlib.contextmanager
def _server_record(settings: Settings) -> Iterator[None]:
    """server.json (0600), where the CLI finds this server and its first API key, for as long as it runs."""
    state = {
        "pid": os.getpid(),
        "host": settings.host,
        "port": settings.port,
        "started": int(time.time()),
        "tls": settings.ssl_certfile is not None,
    }
    keys = settings.all_api_keys()
    if keys:  # the CLI of this folder finds the key here, however it was given; the file is the owner's only
        state["api_key"] = keys[0]
    write_atomic(settings.server_file, json.dumps(state).encode(), mode=0o600)
    try:
        yield
    finally:
        try:
            if json.loads(settings.server_file.read_text()).get("pid") == os.getpid():
                settings.server_file.unlink()
        except (OSError, ValueError):
            pass
