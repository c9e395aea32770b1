"""The registry of loaded models (cortex.runtime.registry.ModelRegistry) with stub engines: one load however
many ask, loads on demand or not, requests that hold a model until their last use, per-model locks, deletes
that wait, weights changed on disk, engines that fail to open, shedding at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cortex.config import Settings
from cortex.errors import InvalidModelFile, ModelNotFound, ModelNotLoaded, ModelUnavailable, ShuttingDown
from cortex.runtime.registry import ModelRegistry
from cortex.store.store import ModelStore
from tests.unit.support import StubEngines, write_model

pytestmark = pytest.mark.anyio


@pytest.fixture
async def registry(
    settings: Callable[..., Settings], models_dir: Path, engines: StubEngines
) -> AsyncIterator[ModelRegistry]:
    write_model(models_dir, "a:1")
    write_model(models_dir, "b:1")
    reg = ModelRegistry(ModelStore(models_dir), settings())
    yield reg
    await reg.close()


async def _hold(registry: ModelRegistry, model_id: str) -> tuple[asyncio.Event, asyncio.Task]:
    """A request that holds `model_id` until the returned event is set; returns once it holds it."""
    release, holding = asyncio.Event(), asyncio.Event()

    async def request() -> None:
        async with registry.use(model_id):
            holding.set()
            await release.wait()

    task = asyncio.ensure_future(request())
    waiter = asyncio.ensure_future(holding.wait())
    await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # its error, if it failed to get the model
    assert holding.is_set(), "the request never got the model"
    return release, task


async def test_a_model_loads_once_however_many_ask(registry: ModelRegistry, engines: StubEngines) -> None:
    loaded = await asyncio.gather(*(registry.load(name) for name in ("a:1", "a", "a:1", "a")))
    assert len(engines) == 1 and all(m is loaded[0] for m in loaded)
    assert [m.record.id for m in registry.loaded()] == ["a:1"]
    assert loaded[0].engine.n_embd == 8 and loaded[0].engine.n_ctx == 16  # from the record


async def test_a_request_loads_on_demand_and_holds_the_model_for_its_block(registry: ModelRegistry) -> None:
    async with registry.use("b") as model:
        assert model.record.id == "b:1" and model.holders == 1
    assert model.holders == 0 and _is_loaded(registry, "b:1")
    with pytest.raises(ModelNotFound):
        async with registry.use("c:1"):
            pass


async def test_without_load_on_demand_a_stored_model_must_be_started(
    settings: Callable[..., Settings], models_dir: Path, engines: StubEngines
) -> None:
    write_model(models_dir, "a:1")
    registry = ModelRegistry(ModelStore(models_dir), settings(load_on_demand=False))
    with pytest.raises(ModelNotLoaded) as caught:
        async with registry.use("a:1"):
            pass
    assert caught.value.status == 409 and engines == []
    await registry.load("a:1")
    async with registry.use("a:1") as model:
        assert model.engine is engines[0]
    await registry.close()


async def test_unload_waits_until_no_request_holds_the_model(registry: ModelRegistry, engines: StubEngines) -> None:
    release, request = await _hold(registry, "a:1")
    unload = asyncio.ensure_future(registry.unload("a:1"))
    await asyncio.sleep(0.05)
    assert not unload.done() and not engines[0].closed  # closing now would free it under the request
    release.set()
    assert await unload is True and engines[0].closed
    await request
    assert await registry.unload("a:1") is False


async def test_a_slow_unload_does_not_hold_up_another_models_first_request(registry: ModelRegistry) -> None:
    release, request = await _hold(registry, "a:1")
    unload = asyncio.ensure_future(registry.unload("a:1"))
    async with asyncio.timeout(2):
        async with registry.use("b:1") as other:
            assert other.record.id == "b:1"
    assert not unload.done()
    release.set()
    await asyncio.gather(unload, request)


async def test_a_delete_waits_for_its_holders_and_requests_meanwhile_get_404(
    registry: ModelRegistry, engines: StubEngines, models_dir: Path
) -> None:
    release, request = await _hold(registry, "a:1")
    delete = asyncio.ensure_future(registry.delete("a"))
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(registry.load("a:1"))  # arrives during the delete: waits for it
    await asyncio.sleep(0.05)
    assert not delete.done() and not late.done() and (models_dir / "a@1").is_dir()
    release.set()
    assert await delete == "a:1"
    with pytest.raises(ModelNotFound):
        await late
    await request
    assert engines[0].closed and len(engines) == 1 and not (models_dir / "a@1").exists()


async def test_weights_changed_on_disk_unload_the_model_and_the_next_request_reloads_it(
    registry: ModelRegistry, engines: StubEngines, models_dir: Path
) -> None:
    await registry.load("a:1")
    (models_dir / "a@1" / "model.gguf").write_bytes(b"GGUF" + bytes(10))
    with pytest.raises(ModelUnavailable) as caught:
        async with registry.use("a:1"):
            pass
    assert "changed on disk" in caught.value.message and str(models_dir) not in caught.value.message
    for _ in range(100):
        if engines[0].closed:
            break
        await asyncio.sleep(0.01)
    assert engines[0].closed and not _is_loaded(registry, "a:1")
    async with registry.use("a:1") as model:  # loaded again, with its files' new state
        assert model.engine is engines[1]


@pytest.mark.parametrize(
    ("error", "words"),
    [(InvalidModelFile("not a valid GGUF: /srv/secret/path"), "its files no longer load"),
     (FileNotFoundError(2, "No such file", "/srv/secret/path"), "its files could not be read")],
)  # fmt: skip
async def test_an_engine_that_fails_to_open_is_a_clear_model_unavailable(
    registry: ModelRegistry, engines: StubEngines, error: Exception, words: str
) -> None:
    def fail(record):
        raise error

    engines.make = fail
    with pytest.raises(ModelUnavailable) as caught:
        await registry.load("a:1")
    assert caught.value.code == "model_unavailable" and words in caught.value.message
    assert "Delete it and import it again" in caught.value.message
    assert not _is_loaded(registry, "a:1")
    if isinstance(error, OSError):
        assert "/srv/secret" not in caught.value.message


async def test_shed_refuses_every_later_request(registry: ModelRegistry) -> None:
    await registry.load("a:1")
    registry.shed(ShuttingDown())
    for model_id in ("a:1", "b:1"):  # loaded or not
        with pytest.raises(ShuttingDown):
            async with registry.use(model_id):
                pass


async def test_close_unloads_every_model(registry: ModelRegistry, engines: StubEngines) -> None:
    await registry.load("a:1")
    await registry.load("b:1")
    await registry.close()
    assert registry.loaded() == [] and all(e.closed for e in engines) and len(engines) == 2


def _is_loaded(registry: ModelRegistry, model_id: str) -> bool:
    return model_id in {m.record.id for m in registry.loaded()}
