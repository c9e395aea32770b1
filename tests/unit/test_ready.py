"""Liveness and readiness (issue 15, operations): /health answers at once; /ready answers 200 once every
model of preload_models is loaded, 503 in OpenAI's shape while one loads or when one failed; both open
without a key, as orchestrators' probes send none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cortex.config import Settings
from tests.unit.support import StubEngines, serve, write_model

pytestmark = pytest.mark.anyio


async def _until_ready(client: httpx.AsyncClient, timeout: float = 5.0) -> httpx.Response:
    for _ in range(int(timeout / 0.02)):
        r = await client.get("/ready")
        if r.status_code == 200:
            return r
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
        assert r.headers["retry-after"] == "1"
        await asyncio.sleep(0.02)
    raise AssertionError(f"never ready: {r.text}")


async def test_ready_once_the_preloaded_models_are_loaded(
    settings: Callable[..., Settings], engines: StubEngines, models_dir: Path
) -> None:
    write_model(models_dir, "a:1")
    write_model(models_dir, "b:1")
    async with serve(settings(preload_models=["a", "b:1"], api_keys=["k"])) as client:
        assert (await client.get("/health")).json()["status"] == "ok"  # no key needed
        body = (await _until_ready(client)).json()
        assert body == {"status": "ready", "models": ["a:1", "b:1"]}
        assert len(engines) == 2  # loaded before any request asked for them
        assert (await client.get("/v1/models")).status_code == 401  # the rest still needs the key


async def test_a_preloaded_model_that_cannot_load_keeps_ready_at_503_with_the_reason(
    settings: Callable[..., Settings], engines: StubEngines, models_dir: Path
) -> None:
    write_model(models_dir, "a:1")
    async with serve(settings(preload_models=["a:1", "missing:1"])) as client:
        for _ in range(250):
            r = await client.get("/ready")
            if "failed" in r.text:
                break
            await asyncio.sleep(0.02)
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "not_ready" and "`missing:1` failed to load" in err["message"]
        write_model(models_dir, "missing:1")  # imported later, and loaded by a request: ready after all
        assert (await client.post("/v1/models/start", json={"model": "missing:1"})).status_code == 200
        r = await client.get("/ready")
        assert r.status_code == 200 and set(r.json()["models"]) == {"a:1", "missing:1"}


async def test_without_preload_a_server_is_ready_at_once(
    settings: Callable[..., Settings], engines: StubEngines
) -> None:
    async with serve(settings()) as client:
        assert (await client.get("/ready")).json() == {"status": "ready", "models": []}
