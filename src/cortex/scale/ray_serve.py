"""cortex as a Ray Serve deployment: each replica is a whole cortex (registry, scheduler, engines) running the
same guarded app as `cortex start`, so the API, errors, limits, API keys and Host/Origin rules are the same.

Replicas share one model store and open it read-only (ModelStore's read_only): a model is imported or pulled
once, by a `cortex start` on the same folder, and every replica serves it. Writes to a replica (imports,
pulls, deletes) get the 403 a read-only folder gives. Every response names its replica in `X-Cortex-Replica`.

This module imports Ray: only `cortex serve-ray` and a Serve config (`serve run`/`serve deploy`) load it.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable
from typing import Any

from ray import serve
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortex.api.server import check_exposure, guarded_app
from cortex.config import RayServeOptions, Settings, load_settings
from cortex.logs import configure as configure_logging

APP_NAME = "cortex"
REPLICA_HEADER = "x-cortex-replica"
log = logging.getLogger("cortex")


class ReplicaHeader:
    """ASGI middleware: every response says which replica served it."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REPLICA_HEADER] = self.name
            await send(message)

        await self.app(scope, receive, send_named)


@serve.ingress()
class CortexReplica:
    """One replica: cortex's app over the shared store, read-only; its lifespan (store, registry, preload of
    `preload_models`) is run by Serve at replica start, and closed after Serve has drained its requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = serve.get_replica_context().replica_id.unique_id
        configure_logging(settings.log_level, None)  # stderr: Ray keeps it in the worker's log

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return ReplicaHeader(guarded_app(self.settings, read_only=True), self.name)


def replica_settings(settings: Settings, options: RayServeOptions) -> Settings:
    """A replica's threads default to the CPUs Ray gives it, not to the machine's cores."""
    if "n_threads" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"n_threads": max(1, math.floor(options.cpus_per_replica))})


def deployment_options(settings: Settings, options: RayServeOptions) -> dict[str, Any]:
    """The Serve deployment's options: replicas or autoscaling, CPUs, concurrency, and a drain as long as
    `cortex start`'s shutdown grace (a replica being removed finishes what it holds first)."""
    scaling: dict[str, Any]
    if options.autoscaling:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
                "upscale_delay_s": options.upscale_delay_s,
                "downscale_delay_s": options.downscale_delay_s,
                "look_back_period_s": options.look_back_period_s,
            }
        }
    else:
        scaling = {"num_replicas": options.replicas or 1}
    return {
        **scaling,
        "name": "Cortex",
        "ray_actor_options": {"num_cpus": options.cpus_per_replica},
        "max_ongoing_requests": options.max_ongoing_requests,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
        "graceful_shutdown_wait_loop_s": 1.0,
    }


def application(settings: Settings, options: RayServeOptions) -> serve.Application:
    """cortex as a Serve application (what `serve.run` takes)."""
    deployment = serve.deployment(CortexReplica).options(**deployment_options(settings, options))
    return deployment.bind(replica_settings(settings, options))


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder a Serve config names (`import_path: cortex.scale.ray_serve:build`): `args`
    holds RayServeOptions' fields and any cortex setting (`data_dir`, `n_threads`, `api_keys`...);
    the rest comes from CORTEX_* variables and the data folder's config.yml, as for `cortex start`."""
    args = dict(args)
    options = RayServeOptions(**{k: args.pop(k) for k in list(args) if k in RayServeOptions.model_fields})
    settings = load_settings(**args)
    for warning in check_exposure(settings):  # as `cortex start`: no key beyond loopback is refused here
        log.warning(warning)
    return application(settings, options)


def run(settings: Settings, options: RayServeOptions, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM on `settings.host:port` through Ray's proxy, then remove the application
    (replicas drain their requests first) and, if this process started it, Serve and the local Ray cluster."""
    import ray

    stop = threading.Event()
    if options.ray_address is None:  # a private local cluster, sized for the replicas, gone with this process
        cpus = max(1, math.ceil(options.most_replicas * options.cpus_per_replica))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    else:
        ray.init(address=options.ray_address)
    for sig in (signal.SIGINT, signal.SIGTERM):  # from here on, a signal ends the wait below, then cleans up
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={
                "host": settings.host,
                "port": settings.port,
                "keep_alive_timeout_s": int(max(1, settings.keepalive_timeout_s)),
                **({"ssl_certfile": str(settings.ssl_certfile)} if settings.ssl_certfile else {}),
                **({"ssl_keyfile": str(settings.ssl_keyfile)} if settings.ssl_keyfile else {}),
            }
        )
        serve.run(application(settings, options), name=APP_NAME, route_prefix="/", blocking=False)
        if on_ready is not None:
            on_ready()
        while not stop.wait(1.0):
            pass
    finally:
        if options.ray_address is None:
            serve.shutdown()
        else:  # a cluster of others' too: remove this application only
            serve.delete(APP_NAME)
        ray.shutdown()
