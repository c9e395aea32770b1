"""GET /metrics and GET /info in process, through the guard, with stub engines (issue 15, operations): the
route label is the route's template whatever the path, per-model counters and batch histograms follow what
was embedded, the loaded models' gauges are read live (none for a model unloaded or deleted), two apps
never share a series, /metrics needs the key, and /info shows every limit in force but no secret."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex.config import Settings
from cortex.engine.kinds import KINDS
from cortex.metrics import UNMATCHED
from tests.unit.support import StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by its name and labels, with prometheus-client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called `name`."""
    return [dict(labels) for n, labels in samples if n == name]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return value(samples, "cortex_http_requests_total", **labels) or 0.0


async def test_the_route_label_is_the_template_never_the_path(api: httpx.AsyncClient) -> None:
    for _ in range(3):  # random ids and paths: one series each, not one per path
        await api.get(f"/v1/models/{uuid.uuid4().hex}")
        await api.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
    assert (await api.delete("/v1/embeddings")).status_code == 405  # no route for the method: still its path
    assert (await api.request("BREW", "/v1/models")).status_code == 405  # an unknown method: `other`
    await api.get("/docs")  # the docs' routes, not included from a router
    await api.get("/openapi.json")
    await api.get(f"/docs/assets/{uuid.uuid4().hex}.js")  # a mount
    s = await scrape(api)
    assert requests(s, "/v1/models/{model_id}", "GET", 404) == 3
    assert requests(s, UNMATCHED, "GET", 404) == 3
    assert requests(s, "/v1/embeddings", "DELETE", 405) == 1
    assert requests(s, "/v1/models", "other", 405) == 1
    assert requests(s, "/docs", "GET", 200) == requests(s, "/openapi.json", "GET", 200) == 1
    assert requests(s, "/docs/assets/{path}", "GET", 404) == 1
    routes = {labels["route"] for labels in series(s, "cortex_http_requests_total")}
    docs = {"/docs", "/openapi.json", "/docs/assets/{path}"}
    assert routes == {"/v1/models/{model_id}", "/v1/embeddings", "/v1/models", UNMATCHED} | docs
    assert value(s, "cortex_http_request_duration_seconds_count", route="/v1/models/{model_id}") == 3
    assert value(s, "cortex_http_request_duration_seconds_count", route=UNMATCHED) == 3
    s = await scrape(api)  # the scrape before is counted too
    assert requests(s, "/metrics", "GET", 200) == 1


async def test_inputs_tokens_and_batches_per_model(api: httpx.AsyncClient, models_dir: Path) -> None:
    write_model(models_dir, "m:1")
    write_model(models_dir, "n:1")
    sent = [("m", ["one two", "three"]), ("m", ["four five six"]), ("n", ["seven"])]
    tokens = {"m:1": 0, "n:1": 0}
    for model, texts in sent:
        r = await api.post("/v1/embeddings", json={"model": model, "input": texts})
        assert r.status_code == 200, r.text
        tokens[f"{model}:1"] += r.json()["usage"]["total_tokens"]
    bad = await api.post("/v1/embeddings", json={"model": "m", "input": ["x " * 40]})  # over the context of 16
    assert bad.status_code == 400
    s = await scrape(api)
    assert tokens == {"m:1": 4 + 3 + 5, "n:1": 3}  # BOS, the words, EOS
    for model, inputs in (("m:1", 3), ("n:1", 1)):
        assert value(s, "cortex_embedded_inputs_total", model=model) == inputs
        assert value(s, "cortex_embedded_tokens_total", model=model) == tokens[model]
        assert value(s, "cortex_batch_inputs_sum", model=model) == inputs  # every input ran in some batch
        assert value(s, "cortex_batch_tokens_sum", model=model) == tokens[model]
        assert value(s, "cortex_batch_inputs_count", model=model) >= 1
        assert value(s, "cortex_model_queued_inputs", model=model) == 0
        assert value(s, "cortex_model_running_inputs", model=model) == 0
        assert value(s, "cortex_model_memory_bytes", model=model) == 4 * 8 * 1000  # the stub's memory_bytes
        assert value(s, "cortex_model_load_seconds", model=model) > 0
    assert value(s, "cortex_models_loaded") == 2
    assert requests(s, "/v1/embeddings", "POST", 200) == 3
    assert requests(s, "/v1/embeddings", "POST", 400) == 1


async def test_queue_gauges_are_read_when_scraped(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "m:1")
    assert (await api.post("/v1/models/start", json={"model": "m"})).status_code == 200
    engines[0].gate.clear()  # the first batch holds in the engine; what comes after waits in the queue
    first = asyncio.create_task(api.post("/v1/embeddings", json={"model": "m", "input": ["a", "b"]}))
    await asyncio.to_thread(engines[0].entered.wait, 10)
    second = asyncio.create_task(api.post("/v1/embeddings", json={"model": "m", "input": ["c", "d", "e"]}))
    try:
        for _ in range(500):
            s = await scrape(api)
            if value(s, "cortex_model_queued_inputs", model="m:1") == 3:
                break
            await asyncio.sleep(0.01)
        assert value(s, "cortex_model_queued_inputs", model="m:1") == 3
        assert value(s, "cortex_model_running_inputs", model="m:1") == 2
    finally:
        engines[0].gate.set()
    assert (await first).status_code == (await second).status_code == 200
    s = await scrape(api)
    assert value(s, "cortex_model_queued_inputs", model="m:1") == value(s, "cortex_model_running_inputs", model="m:1")
    assert value(s, "cortex_model_queued_inputs", model="m:1") == 0
    assert value(s, "cortex_embedded_inputs_total", model="m:1") == 5


async def test_an_unloaded_or_deleted_model_has_no_gauges_but_keeps_its_counters(
    api: httpx.AsyncClient, models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "m:1")
    assert (await api.post("/v1/embeddings", json={"model": "m", "input": "a b"})).status_code == 200
    assert (await api.post("/v1/models/stop", json={"model": "m"})).json()["was_loaded"] is True
    s = await scrape(api)
    assert value(s, "cortex_models_loaded") == 0
    for gauge in ("queued_inputs", "running_inputs", "load_seconds", "memory_bytes"):
        assert series(s, f"cortex_model_{gauge}") == []
    assert value(s, "cortex_embedded_inputs_total", model="m:1") == 1
    assert (await api.post("/v1/embeddings", json={"model": "m", "input": "c"})).status_code == 200  # loads again
    s = await scrape(api)
    assert len(engines) == 2 and value(s, "cortex_models_loaded") == 1
    assert value(s, "cortex_embedded_inputs_total", model="m:1") == 2  # the same series, counting on
    assert value(s, "cortex_model_memory_bytes", model="m:1") == engines[1].memory_bytes()
    assert (await api.delete("/v1/models/m:1")).status_code == 200
    s = await scrape(api)
    assert series(s, "cortex_model_memory_bytes") == [] and value(s, "cortex_models_loaded") == 0


async def test_two_apps_in_one_process_never_share_a_series(
    settings: Callable[..., Settings], engines: StubEngines, tmp_path: Path
) -> None:
    async with serve(settings()) as one, serve(settings(data_dir=tmp_path / "other")) as two:
        for _ in range(3):
            await one.get("/v1/models")
        assert requests(await scrape(one), "/v1/models", "GET", 200) == 3
        assert requests(await scrape(two), "/v1/models", "GET", 200) == 0


async def test_metrics_need_the_key_and_refusals_are_counted(
    settings: Callable[..., Settings], engines: StubEngines
) -> None:
    async with serve(settings(api_keys=["sesame"])) as client:
        r = await client.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/info")).status_code == 401
        assert (await client.get("/health")).status_code == 200  # the probes stay open
        s = await scrape(client, authorization="Bearer sesame")
        assert requests(s, "/metrics", "GET", 401) == 1  # refused before the app: labelled all the same
        assert requests(s, "/info", "GET", 401) == 1
        assert requests(s, "/health", "GET", 200) == 1
        assert value(s, "process_resident_memory_bytes") > 0  # the process collector
        assert value(s, "cortex_info", version=__import__("cortex").__version__) == 1


async def test_info_shows_models_engines_and_every_limit_but_no_secret(
    settings: Callable[..., Settings], engines: StubEngines, models_dir: Path, tmp_path: Path
) -> None:
    write_model(models_dir, "m:1")
    write_model(models_dir, "n:1", engine="onnxruntime")
    key_file = tmp_path / "keys.txt"
    key_file.write_text("from-the-file\n")
    s = settings(api_keys=["sesame"], api_key_file=key_file, max_inputs=7, auto_truncate=True, max_json_depth=9)
    headers = {"authorization": "Bearer sesame"}
    async with serve(s) as client:
        assert (await client.post("/v1/models/start", json={"model": "m"}, headers=headers)).status_code == 200
        r = await client.get("/info", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "info" and body["version"] == __import__("cortex").__version__
    models = {m["id"]: m for m in body["models"]}
    assert models["m:1"]["status"] == "loaded" and models["m:1"]["memory_bytes"] == engines[0].memory_bytes()
    assert models["n:1"]["status"] == "stored" and models["n:1"]["engine"] == "onnxruntime"
    assert [e["name"] for e in body["engines"]] == list(KINDS)
    llama = next(e for e in body["engines"] if e["name"] == "llama-cpp")
    assert llama["imports"] == ["gguf", "sentence-transformers"] and llama["options"] == ["outtype"]
    assert llama["settings"] == ["llama_max_batch_tokens", "llama_max_batch_seqs"]
    limits = body["limits"]
    assert limits == s.limits()
    assert limits["max_inputs"] == 7 and limits["auto_truncate"] is True and limits["max_json_depth"] == 9
    assert limits["request_timeout_s"] == 30.0 and limits["llama_max_batch_seqs"] == 64
    for secret in ("sesame", "from-the-file", str(key_file)):
        assert secret not in r.text


def test_limits_are_the_numbers_and_switches_of_the_settings(settings: Callable[..., Settings]) -> None:
    s = settings(port=4000, insecure=True)
    limits = s.limits()
    assert {"port", "insecure", "api_keys", "api_key_file", "ssl_keyfile", "data_dir", "host"}.isdisjoint(limits)
    for name in Settings.model_fields:  # every other number or switch is one, whatever settings are added
        value = getattr(s, name)
        number = isinstance(value, bool | int | float)
        if name in limits:
            assert number or value is None, name  # None: a limit that is off
        else:
            assert not number or name in ("port", "insecure"), name
    assert {"max_inputs", "max_tokens_per_request", "max_body_bytes", "max_queue_inputs", "max_json_depth",
            "request_timeout_s", "keepalive_timeout_s", "max_connections", "n_threads", "llama_max_batch_tokens",
            "llama_max_batch_seqs", "auto_truncate", "default_ctx_len"} <= set(limits)  # fmt: skip
