"""Keep-alive in the registry (cortex.runtime.registry) with stub engines: idle models unload after
idle_unload_s or their own keep_alive, never while a request holds them; max_loaded_models unloads the least
recently used idle model first; and Ollama's keep_alive durations (cortex.schemas.parse_keep_alive)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cortex.config import Settings
from cortex.runtime.registry import ModelRegistry
from cortex.schemas import parse_keep_alive
from cortex.store.store import ModelStore
from tests.unit.support import StubEngines, write_model

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("10s", 10),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("0", 0),
        ("30", 30),  # a bare number in a string is seconds, as OLLAMA_KEEP_ALIVE reads it
        (0, 0),
        (12.5, 12.5),
        (-1, math.inf),
        ("-1m", math.inf),
        ("-1", math.inf),
        (1e300, math.inf),  # beyond a century: forever, not a date no clock holds
        ("1e12", math.inf),
        ("1000000h", math.inf),
    ],
)
async def test_keep_alive_takes_seconds_and_go_durations(value: float | str, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5x", "1h30", "nan", float("inf")])
async def test_keep_alive_refuses_what_is_no_duration(value: float | str) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def _registry(models_dir: Path, settings: Settings, *ids: str) -> ModelRegistry:
    for model_id in ids:
        write_model(models_dir, model_id)
    return ModelRegistry(ModelStore(models_dir), settings)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` (the reaper runs on the same loop), failing after 10 s."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _ids(registry: ModelRegistry) -> list[str]:
    return sorted(m.record.id for m in registry.loaded())


async def test_by_default_models_stay_loaded(settings, models_dir: Path, engines: StubEngines) -> None:
    registry = _registry(models_dir, settings(), "a:1")
    async with registry.use("a:1") as model:
        pass
    assert model.keep_alive_s == math.inf and model.expires_at() is None
    await asyncio.sleep(0.05)
    assert _ids(registry) == ["a:1"]
    await registry.close()


async def test_an_idle_model_unloads_after_idle_unload_s_and_the_next_request_reloads_it(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    registry = _registry(models_dir, settings(idle_unload_s=0.05), "a:1")
    before = time.time()
    async with registry.use("a:1") as first:
        expires = first.expires_at()  # held: its keep-alive counts from now
        assert expires is not None and expires >= before + 0.05
    await _until(lambda: not registry.loaded(), "a:1 unloaded once idle")
    assert engines[0].closed
    async with registry.use("a:1") as second:
        assert second is not first and second.engine is engines[1]
    await registry.close()


async def test_a_held_model_is_never_unloaded_however_long_it_is_held(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    registry = _registry(models_dir, settings(idle_unload_s=0.01), "a:1")
    async with registry.use("a:1"):
        await asyncio.sleep(0.1)  # ten times its keep-alive
        assert _ids(registry) == ["a:1"] and not engines[0].closed
    await _until(lambda: not registry.loaded(), "a:1 unloaded once let go")
    await registry.close()


async def test_keep_alive_zero_unloads_right_after_the_request_and_negative_keeps_it(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    registry = _registry(models_dir, settings(idle_unload_s=0.05), "a:1", "b:1")
    async with registry.use("a:1", keep_alive_s=0):
        assert _ids(registry) == ["a:1"]
    async with registry.use("b:1", keep_alive_s=math.inf) as b:
        pass
    await _until(lambda: _ids(registry) == ["b:1"], "a:1 unloaded, b:1 kept")
    await asyncio.sleep(0.1)  # past idle_unload_s: b's own keep-alive wins
    assert _ids(registry) == ["b:1"] and b.expires_at() is None
    async with registry.use("b:1"):  # a request without keep_alive leaves the model's own
        pass
    assert b.keep_alive_s == math.inf
    await registry.close()


async def test_max_loaded_models_unloads_the_least_recently_used_idle_model(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    registry = _registry(models_dir, settings(max_loaded_models=2), "a:1", "b:1", "c:1")
    async with registry.use("a:1"):
        pass
    async with registry.use("b:1"):
        pass
    async with registry.use("a:1"):  # b is now the least recently used
        pass
    async with registry.use("c:1"):
        assert _ids(registry) == ["a:1", "c:1"]
    assert engines[1].closed and not engines[0].closed
    await registry.close()


async def test_max_loaded_models_never_unloads_a_held_model(settings, models_dir: Path, engines: StubEngines) -> None:
    registry = _registry(models_dir, settings(max_loaded_models=1), "a:1", "b:1")
    async with registry.use("a:1"):
        async with registry.use("b:1"):  # a is held: both stay loaded, over the cap, while it is
            assert _ids(registry) == ["a:1", "b:1"]
        await asyncio.sleep(0.05)
        assert "a:1" in _ids(registry)
    await _until(lambda: len(registry.loaded()) == 1, "back under the cap once a request let go")
    await registry.close()


async def test_a_preloaded_model_is_kept_and_never_unloaded_for_room(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    """GET /ready waits for preload_models: neither idle_unload_s nor the cap may unload one of them."""
    config = settings(preload_models=["a"], idle_unload_s=0.05, max_loaded_models=1)
    registry = _registry(models_dir, config, "a:1", "b:1")
    async with registry.use("a:1") as a:
        pass
    async with registry.use("b:1"):  # over the cap: a is pinned, so both stay while b is held
        assert _ids(registry) == ["a:1", "b:1"]
    await _until(lambda: _ids(registry) == ["a:1"], "b:1 unloaded once idle, a:1 kept")
    assert a.pinned and a.expires_at() is None
    async with registry.use("a:1", keep_alive_s=0):  # a request's own keep_alive still lets it go
        pass
    await _until(lambda: not registry.loaded(), "a:1 unloaded after keep_alive=0")
    await registry.close()


async def test_keep_alive_default_gives_the_model_the_servers_again(
    settings, models_dir: Path, engines: StubEngines
) -> None:
    registry = _registry(models_dir, settings(idle_unload_s=600), "a:1")
    async with registry.use("a:1", keep_alive_s=math.inf) as a:
        pass
    assert a.keep_alive_s == math.inf
    async with registry.use("a:1", keep_alive_s="default"):
        pass
    assert a.keep_alive_s == 600
    await registry.close()


async def test_the_model_object_says_when_a_model_unloads(settings, models_dir: Path, engines: StubEngines) -> None:
    from tests.unit.support import serve

    write_model(models_dir, "a:1")
    async with serve(settings(idle_unload_s=600)) as api:
        r = await api.post("/v1/models/start", json={"model": "a:1"})
        assert r.status_code == 200, r.text
        expires = r.json()["expires_at"]
        assert time.time() < expires <= time.time() + 601
        stored = (await api.get("/v1/models")).json()["data"][0]
        assert stored["status"] == "loaded" and stored["expires_at"] == expires
