"""Loaded models: load (explicitly or on first use), look up, unload, and unload again when idle (keep-alive,
`max_loaded_models`). Owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from cortex.config import Settings
from cortex.engine.base import Engine
from cortex.engine.kinds import kind_of
from cortex.errors import (
    CortexError,
    InvalidModelFile,
    InvalidRequest,
    ModelNotLoaded,
    ModelUnavailable,
    WrongModelTask,
)
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
    no one holds it, because closing frees the native model under any thread still tokenizing.

    Keep-alive: once no request holds it, it stays loaded `keep_alive_s` seconds after its last use (inf:
    until unloaded by hand or for room); `on_idle` is told when the last holder lets go. A `pinned` model (one
    of preload_models, which GET /ready waits for) is kept by default and never unloaded for room."""

    record: ModelRecord
    engine: Engine
    scheduler: BatchScheduler
    paths: tuple[Path, ...]  # its stored files
    files: tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of each when it was loaded
    load_s: float = 0.0  # how long its load took (GET /metrics)
    holders: int = 0
    keep_alive_s: float = math.inf
    pinned: bool = False
    last_used: float = field(default_factory=time.monotonic)  # time.monotonic() of the last hold or release
    on_idle: Callable[[LoadedModel], None] = field(default=lambda _: None, repr=False)
    _free: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._free.set()

    def hold(self) -> None:
        self.holders += 1
        self.last_used = time.monotonic()
        self._free.clear()

    def release(self) -> None:
        self.holders -= 1
        self.last_used = time.monotonic()
        if self.holders == 0:
            self._free.set()
            self.on_idle(self)

    def deadline(self) -> float:
        """The time.monotonic() after which it is unloaded if still idle (inf: never); moot while held."""
        return self.last_used + self.keep_alive_s

    def expires_at(self) -> float | None:
        """When (Unix time) it will be unloaded if no request uses it meanwhile; None for never. A held
        model counts its keep-alive from now, the earliest its last holder can let go."""
        if math.isinf(self.keep_alive_s):
            return None
        left = self.keep_alive_s if self.holders else max(0.0, self.deadline() - time.monotonic())
        return time.time() + left

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
    so an import, a delete or a folder moved by hand is seen at once.

    A background task (started with the first load, ended by `close`) unloads a model once it has been
    idle for its keep-alive (`idle_unload_s`, or what a request set with `use(keep_alive_s=...)`), and idle
    models beyond `max_loaded_models`, least recently used first. It never unloads a held model: it checks
    under the model's lock that no request holds it, and no request can take it between that check and
    the unload (both run without an await in between)."""

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
        self._idle_unload_s = settings.idle_unload_s or math.inf
        self._wake = asyncio.Event()  # a model went idle, loaded, or got a new keep-alive: the reaper looks again
        self._reaper: asyncio.Task | None = None

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def implied(self, task: str | None = None) -> str:
        """The model a request that names none means (text-embeddings-inference's and llama-server's clients
        send no `model`): the only stored model of `task` (None: any); with several, or none, a 400 asking for
        `model`. From the store only, never from what happens to be loaded: the same request must mean the
        same model whatever keep-alive unloaded or another request loaded."""
        stored = [r.id for r in self.store.list() if task is None or r.task == task]
        if len(stored) == 1:
            return stored[0]
        kind = "" if task is None else f"{task} "
        have = f"{len(stored)} {kind}models are stored ({', '.join(stored)})" if stored else f"no {kind}model is stored"
        raise InvalidRequest(f"You must provide a model parameter: {have}.", param="model")

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def use(
        self, model_id: str, task: str | None = "embed", *, keep_alive_s: float | Literal["default"] | None = None
    ) -> AsyncIterator[LoadedModel]:
        """The loaded model that `model_id` names, loading it first if allowed, held for the block. A model
        of another task (ModelRecord.task: embed, rerank) is refused before it is loaded (WrongModelTask); None
        takes any.
        `keep_alive_s` (Ollama's keep_alive): how long it stays loaded once idle, from now on (0: unloaded
        right after this block; inf: until unloaded by hand); "default" gives it the server's again
        (`default_keep_alive`); None leaves it as it is."""
        model = await self._acquire(model_id, task)
        if keep_alive_s is not None:
            model.keep_alive_s = self.default_keep_alive(model) if keep_alive_s == "default" else keep_alive_s
        try:
            yield model
        finally:
            model.release()

    async def _acquire(self, model_id: str, task: str | None) -> LoadedModel:
        if self._shed is not None:
            raise self._shed.with_traceback(None)
        resolved = self.store.resolve(model_id)  # ModelNotFound for an unknown id
        hit = self._loaded.get(resolved)
        record = hit.record if hit is not None else self.store.get(resolved)
        if task is not None and record.task != task:
            raise WrongModelTask(record.id, record.task, task)
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
            await self._make_room(1)  # before opening: the memory of the model unloaded is free for this one
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
            loaded = LoadedModel(
                record, engine, scheduler, paths, files, load_s, pinned=self._preloaded(record.id), on_idle=self._idle
            )
            loaded.keep_alive_s = self.default_keep_alive(loaded)
            self._loaded[record.id] = loaded
            self._start_reaper()
            self._wake.set()  # its deadline, and the cap if two models loaded at once
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

    def default_keep_alive(self, model: LoadedModel) -> float:
        """idle_unload_s (inf for 0), or inf for a model of preload_models: unloading one would make GET /ready
        fail, so only a request's own keep_alive can let it go."""
        return math.inf if model.pinned else self._idle_unload_s

    def _preloaded(self, model_id: str) -> bool:
        for name in self.settings.preload_models:
            with contextlib.suppress(CortexError):  # a name that no longer resolves pins nothing
                if self.store.resolve(name) == model_id:
                    return True
        return False

    def _idle(self, model: LoadedModel) -> None:
        if not math.isinf(model.keep_alive_s) or self.settings.max_loaded_models:
            self._wake.set()

    def _start_reaper(self) -> None:
        if self._reaper is None:
            # a context of its own: not that of the request that loaded the first model, which its lines would name
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap(), name="cortex-keep-alive", context=contextvars.Context()
            )

    async def _reap(self) -> None:
        """Unload idle models past their deadline and beyond the cap; then sleep until the next deadline or
        until `_wake` (a model went idle, loaded, or got a new keep-alive)."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            for model in self._idle_lru():
                if model.deadline() <= now:
                    await self._unload_idle(model.record.id, expired=True)
            await self._make_room(0)
            next_deadline = min((m.deadline() for m in self._idle_lru()), default=math.inf)
            timeout = None if math.isinf(next_deadline) else max(0.0, next_deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _idle_lru(self) -> list[LoadedModel]:
        """The loaded models no request holds, least recently used first."""
        return sorted((m for m in self._loaded.values() if not m.holders), key=lambda m: m.last_used)

    def _evictable(self) -> list[LoadedModel]:
        return [m for m in self._idle_lru() if not m.pinned]

    async def _make_room(self, more: int) -> None:
        """Unload idle models, least recently used first, until `more` more fit under max_loaded_models. Held
        and pinned models stay: with all of them held the cap is exceeded until one is let go (the reaper then
        acts); the pinned ones count towards it."""
        cap = self.settings.max_loaded_models
        for model in self._evictable() if cap else ():
            if len(self._loaded) + more <= cap:
                return
            log.info("unloading %s to stay within max_loaded_models=%d", model.record.id, cap)
            await self._unload_idle(model.record.id, expired=False)

    async def _unload_idle(self, model_id: str, *, expired: bool) -> None:
        """Unload `model_id` if, under its lock, no request holds it (and, if `expired`, it is past its
        deadline: a request may have used it since it was chosen)."""
        async with self._lock(model_id):
            model = self._loaded.get(model_id)
            if model is None or model.holders or (expired and model.deadline() > time.monotonic()):
                return
            if expired:
                log.info("unloading %s: idle for %gs (keep-alive)", model_id, model.keep_alive_s)
            try:
                await self._unload_locked(model_id)
            except Exception:  # the reaper must outlive one engine's failure to close
                log.exception("unloading %s failed", model_id)

    def shed(self, exc: CortexError) -> None:
        """Fail every queued input with `exc` and refuse later requests with it (no model loads either);
        batches already running finish. See `BatchScheduler.fail_pending`."""
        self._shed = exc
        for loaded in self._loaded.values():
            loaded.scheduler.fail_pending(exc)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for model_id in list(self._loaded):
            await self.unload(model_id)
