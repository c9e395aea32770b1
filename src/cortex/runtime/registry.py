"""Loaded models: load (explicitly or on first use), look up, unload. Owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cortex.config import Settings
from cortex.engine.base import Engine
from cortex.engine.kinds import kind_of
from cortex.errors import CortexError, InvalidModelFile, ModelNotLoaded, ModelUnavailable
from cortex.runtime.scheduler import BatchScheduler
from cortex.store.store import ModelRecord, ModelStore

if TYPE_CHECKING:
    from cortex.metrics import ModelMeter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class LoadedModel:
    """A model in memory. Requests hold it (`hold`/`release`, or `run_held` for work on a thread) from
    the moment they find it until their last use of its tokenizer and scheduler: it is closed only when
    no one holds it, because closing frees the native model under any thread still tokenizing."""

    record: ModelRecord
    engine: Engine
    scheduler: BatchScheduler
    paths: tuple[Path, ...]  # its stored files
    files: tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of each when it was loaded
    load_s: float = 0.0  # how long its load took (GET /metrics)
    holders: int = 0
    _free: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._free.set()

    def hold(self) -> None:
        self.holders += 1
        self._free.clear()

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self._free.set()

    async def run_held(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a thread, the model held until the thread returns, even if the awaiting request is
        cancelled first (a client that leaves mid-tokenize must not let the model close under the thread)."""
        self.hold()
        work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        work.add_done_callback(lambda _: self.release())
        return await asyncio.shield(work)

    async def unheld(self) -> None:
        """Return once no request holds the model."""
        await self._free.wait()


def _files_state(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    try:
        stats = [path.stat() for path in paths]
    except OSError:
        return ()
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


class ModelRegistry:
    """The models held in memory, keyed by their stored id.

    Each model has its own lock, held while it loads, unloads or is deleted: a slow drain of one model
    never delays another model's first request, and no request can load a model that is being deleted.
    Names resolve through the store on every request (an exact id always wins over a bare name's tag),
    so an import, a delete or a folder moved by hand is seen at once."""

    def __init__(
        self, store: ModelStore, settings: Settings, *, meter: Callable[[str], ModelMeter] | None = None
    ) -> None:
        """`meter`: gives each model's scheduler the meter it reports to (`cortex.metrics.Metrics.meter`)."""
        self.store = store
        self.settings = settings
        self._meter = meter
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unloading: set[asyncio.Task] = set()  # unloads started from a request, kept until done
        self._shed: CortexError | None = None  # set by shed(): the answer to every later request

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[LoadedModel]:
        """The loaded model that `model_id` names, loading it first if allowed, held for the block."""
        model = await self._acquire(model_id)
        try:
            yield model
        finally:
            model.release()

    async def _acquire(self, model_id: str) -> LoadedModel:
        if self._shed is not None:
            raise self._shed.with_traceback(None)
        resolved = self.store.resolve(model_id)  # ModelNotFound for an unknown id
        hit = self._loaded.get(resolved)
        if hit is None:
            if not self.settings.load_on_demand:
                raise ModelNotLoaded(model_id)
            hit = await self.load(resolved)
        hit = self._unchanged(hit)
        hit.hold()  # no await since it was found: it cannot have been closed in between
        return hit

    def _unchanged(self, hit: LoadedModel) -> LoadedModel:
        """`hit`, unless its files changed on disk since it was loaded (one stat per file: 7 us for three).

        Engines hold their weights in memory, so a loaded model survives its file being cut short or
        rewritten; but it no longer matches what the store holds, so it stops serving: it is unloaded
        (what is in flight finishes) and the next request reloads it, which checks the file again."""
        if _files_state(hit.paths) == hit.files:
            return hit
        model_id = hit.record.id
        if self._loaded.get(model_id) is hit:
            log.error("the files of %s changed on disk while it was loaded: unloading it", model_id)
            task = asyncio.get_running_loop().create_task(self.unload(model_id))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)
        raise ModelUnavailable(model_id, "its weights file changed on disk while it was loaded")

    async def load(self, model_id: str) -> LoadedModel:
        """Load a stored model (no-op if it is loaded)."""
        resolved = self.store.resolve(model_id)
        async with self._lock(resolved):
            hit = self._loaded.get(resolved)
            if hit is not None:
                return hit
            record = self.store.get(resolved)  # under the lock: a delete that ran meanwhile is a 404 here
            t0 = time.perf_counter()
            paths = tuple(self.store.folder(record.id) / name for name in record.files)
            files = _files_state(paths)  # before opening: a change during the load is caught too
            try:
                engine = await asyncio.to_thread(self._open_engine, record)
            except InvalidModelFile as exc:  # it passed the checks at import: its files changed since
                raise ModelUnavailable(record.id, f"its files no longer load ({exc.message})") from exc
            except OSError as exc:  # removed or unreadable under us; the message would name a server path
                raise ModelUnavailable(record.id, "its files could not be read") from exc
            load_s = time.perf_counter() - t0
            meter = self._meter(record.id) if self._meter is not None else None
            scheduler = BatchScheduler(
                engine, model_id=record.id, max_queue_inputs=self.settings.max_queue_inputs, meter=meter
            )
            loaded = LoadedModel(record, engine, scheduler, paths, files, load_s)
            self._loaded[record.id] = loaded
            log.info("loaded %s in %.2fs", record.id, load_s)
            return loaded

    def _open_engine(self, record: ModelRecord) -> Engine:
        folder = self.store.verified_files(record)
        return kind_of(record.engine, record.id).open(folder, record, self.settings)

    async def unload(self, model_id: str) -> bool:
        """Unload once every request that holds it is done. Returns False if it was not loaded."""
        async with self._lock(model_id):
            return await self._unload_locked(model_id)

    async def delete(self, model_id: str) -> str:
        """Unload and remove a stored model; returns its id. Requests for it meanwhile wait, then get 404."""
        resolved = self.store.resolve(model_id)
        async with self._lock(resolved):
            await self._unload_locked(resolved)
            return await asyncio.to_thread(self.store.delete, resolved)

    async def _unload_locked(self, model_id: str) -> bool:
        loaded = self._loaded.pop(model_id, None)
        if loaded is None:
            return False
        await loaded.unheld()
        await loaded.scheduler.close()
        await asyncio.to_thread(loaded.engine.close)
        log.info("unloaded %s", loaded.record.id)
        return True

    def shed(self, exc: CortexError) -> None:
        """Fail every queued input with `exc` and refuse later requests with it (no model loads either);
        batches already running finish. See `BatchScheduler.fail_pending`."""
        self._shed = exc
        for loaded in self._loaded.values():
            loaded.scheduler.fail_pending(exc)

    async def close(self) -> None:
        for model_id in list(self._loaded):
            await self.unload(model_id)
