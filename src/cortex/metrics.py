"""Prometheus metrics of one app (GET /metrics), in a registry of its own: two apps in one process never mix.

Three sources, each as cheap as its place allows:
- every HTTP request, counted and timed by the guard (`Metrics.request`), labelled by its route's template
  (`/v1/models/{model_id}`), never the raw path, so no client can grow the label set; a path no route
  knows is `unmatched`;
- per model, what the scheduler reports as it works (`ModelMeter`: batches, inputs and tokens answered),
  through label children bound once per model;
- per loaded model, what is read only when scraped (`_LoadedModels`): queue depth, inputs running, load
  time, memory. A model unloaded or deleted has no such series: nothing stale is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from cortex import __version__

if TYPE_CHECKING:
    from cortex.runtime.registry import ModelRegistry

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what `Metrics.render` writes
UNMATCHED = "unmatched"  # the route label of a path no route serves
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "other"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


def route_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that served (or would serve) this request, without converters
    (`/v1/models/{model_id}`): the one FastAPI matched, else the one Starlette's router would take among
    `routes` (a full match, else the first whose path matches for another method: a 405), for a request
    refused before the app or served by a plain route; else `unmatched`."""
    route = scope.get("route")
    if route is not None:
        return route.path_format
    probe = {"type": "http", "path": scope["path"], "root_path": "", "method": scope["method"]}
    partial = UNMATCHED
    for candidate in routes:
        match, _ = candidate.matches(probe)
        if match is Match.FULL:
            return getattr(candidate, "path_format", UNMATCHED)
        if match is Match.PARTIAL and partial is UNMATCHED:
            partial = getattr(candidate, "path_format", UNMATCHED)
    return partial


class ModelMeter:
    """One model's counters and histograms, bound to its label once; what its scheduler reports."""

    __slots__ = ("_batch_inputs", "_batch_tokens", "_inputs", "_tokens")

    def __init__(self, metrics: Metrics, model_id: str) -> None:
        self._inputs = metrics.embedded_inputs.labels(model_id)
        self._tokens = metrics.embedded_tokens.labels(model_id)
        self._batch_inputs = metrics.batch_inputs.labels(model_id)
        self._batch_tokens = metrics.batch_tokens.labels(model_id)

    def batch(self, inputs: int, tokens: int) -> None:
        """An engine batch of `inputs` sequences, `tokens` in all, was taken from the queue."""
        self._batch_inputs.observe(inputs)
        self._batch_tokens.observe(tokens)

    def embedded(self, inputs: int, tokens: int) -> None:
        """A request's `inputs`, `tokens` in all, were answered."""
        self._inputs.inc(inputs)
        self._tokens.inc(tokens)


class _LoadedModels(Collector):
    """Gauges of the loaded models, read from the registry when scraped (nothing on the hot path). Runs on
    the event loop (the route calls it), where the registry and the schedulers change, so it reads a
    consistent state: no model can be closed while it is read."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        label = ["model"]
        queued = GaugeMetricFamily("cortex_model_queued_inputs", "Inputs waiting in the model's queue", labels=label)
        running = GaugeMetricFamily(
            "cortex_model_running_inputs", "Inputs in engine batches running now (in flight)", labels=label
        )
        load = GaugeMetricFamily("cortex_model_load_seconds", "How long the model's current load took", labels=label)
        memory = GaugeMetricFamily(
            "cortex_model_memory_bytes", "Bytes the loaded model's weights and buffers take", labels=label
        )
        models = self._registry.loaded()
        for model in models:
            name = [model.record.id]
            queued.add_metric(name, model.scheduler.queued)
            running.add_metric(name, model.scheduler.running)
            load.add_metric(name, model.load_s)
            memory.add_metric(name, model.engine.memory_bytes())
        yield GaugeMetricFamily("cortex_models_loaded", "Models loaded in memory", value=len(models))
        yield from (queued, running, load, memory)


class Metrics:
    """The app's metric families and its registry (`app.state.metrics`, made by `create_app`)."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        """`routes`: every route of the app, in the order it tries them (each a Route or a Mount, not an
        included router), to name the route of a request FastAPI did not match."""
        self.registry = CollectorRegistry()
        self._routes = routes
        r = self.registry
        ProcessCollector(registry=r)
        Info("cortex", "The server's version", registry=r).info({"version": __version__})
        self.requests = Counter(
            "cortex_http_requests", "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"), registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "cortex_http_request_duration_seconds", "Time from a request's arrival to the end of its answer",
            ("route",), buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.embedded_inputs = Counter("cortex_embedded_inputs", "Inputs answered", ("model",), registry=r)
        self.embedded_tokens = Counter(
            "cortex_embedded_tokens", "Tokens of the inputs answered", ("model",), registry=r
        )
        self.batch_inputs = Histogram(
            "cortex_batch_inputs", "Inputs per engine batch", ("model",), buckets=_BATCH_INPUT_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "cortex_batch_tokens", "Tokens per engine batch", ("model",), buckets=_BATCH_TOKEN_BUCKETS, registry=r
        )
        # label children bound once: one per (route, method, status) seen, one per model ever loaded
        self._http: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._meters: dict[str, ModelMeter] = {}
        self._watched: _LoadedModels | None = None

    def request(self, scope: Scope, status: int, seconds: float) -> None:
        """Count and time one answered request (`status` 499: the client left before an answer)."""
        method = scope["method"] if scope["method"] in _METHODS else "other"
        route = route_label(scope, self._routes)
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def meter(self, model_id: str) -> ModelMeter:
        """The meter of `model_id`, the same across loads: its counters keep counting after a reload."""
        meter = self._meters.get(model_id)
        if meter is None:
            meter = self._meters[model_id] = ModelMeter(self, model_id)
        return meter

    def watch(self, registry: ModelRegistry | None) -> None:
        """Report the loaded models of `registry` from now on (None: stop, when the lifespan ends)."""
        if self._watched is not None:
            self.registry.unregister(self._watched)
            self._watched = None
        if registry is not None:
            self._watched = _LoadedModels(registry)
            self.registry.register(self._watched)

    def render(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)
