"""Loaded models: load (explicitly or on first use), look up, unload. Owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cortex.config import Settings
from cortex.engine.base import Engine
from cortex.engine.llama import LlamaCppEngine
from cortex.errors import CortexError, InvalidModelFile, ModelNotLoaded, ModelUnavailable
from cortex.hardware import llama_cpp_report
from cortex.runtime.scheduler import BatchScheduler
from cortex.store.store import ModelRecord, ModelStore

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    record: ModelRecord
    engine: Engine
    scheduler: BatchScheduler
    paths: tuple[Path, ...]  # its stored files
    files: tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of each when it was loaded
    loaded_at: float = field(default_factory=time.time)


def _files_state(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    try:
        stats = [path.stat() for path in paths]
    except OSError:
        return ()
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


class ModelRegistry:
    """The models held in memory, keyed by their stored id."""

    def __init__(self, store: ModelStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._loaded: dict[str, LoadedModel] = {}
        self._aliases: dict[str, str] = {}  # a requested name (`all-minilm`) -> the loaded id it resolved to
        self._lock = asyncio.Lock()
        self._unloading: set[asyncio.Task] = set()  # unloads started from a request, kept until done
        self._shed: CortexError | None = None  # set by shed(): the answer to every later request

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    async def get(self, model_id: str) -> LoadedModel:
        """The loaded model that `model_id` names, loading it first if allowed."""
        if self._shed is not None:
            raise self._shed.with_traceback(None)
        hit = self._loaded.get(self._aliases.get(model_id, model_id))
        if hit is not None:
            return self._unchanged(hit)
        resolved = self.store.resolve(model_id)  # ModelNotFound for an unknown id
        hit = self._loaded.get(resolved)
        if hit is not None:
            self._aliases[model_id] = resolved  # a hot path must not read the store on every request
            return self._unchanged(hit)
        if not self.settings.load_on_demand:
            raise ModelNotLoaded(model_id)
        return await self.load(resolved)

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
        record = self.store.get(model_id)
        async with self._lock:
            hit = self._loaded.get(record.id)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            paths = tuple(self.store.folder(record.id) / name for name in record.files)
            files = _files_state(paths)  # before opening: a change during the load is caught too
            try:
                engine = await asyncio.to_thread(self._open_engine, record)
            except InvalidModelFile as exc:  # it passed the checks at import: its files changed since
                raise ModelUnavailable(record.id, f"its files no longer load ({exc.message})") from exc
            scheduler = BatchScheduler(engine, model_id=record.id, max_queue_inputs=self.settings.max_queue_inputs)
            loaded = LoadedModel(record, engine, scheduler, paths, files)
            self._loaded[record.id] = loaded
            log.info("loaded %s in %.2fs", record.id, time.perf_counter() - t0)
            return loaded

    def _open_engine(self, record: ModelRecord) -> Engine:
        s = self.settings
        weights = self.store.verified_weights(record)
        if record.engine == "onnxruntime":
            from cortex.engine.onnx import OnnxEngine

            return OnnxEngine(weights.parent, ctx_len=record.ctx_len, n_threads=s.n_threads)
        llama = llama_cpp_report()
        if llama.error is not None:
            why = f"llama.cpp cannot run on this machine ({llama.error}); see `cortex hardware`"
            raise ModelUnavailable(record.id, why)
        return LlamaCppEngine(
            weights,
            pooling=record.pooling,
            ctx_len=record.ctx_len,
            n_threads=s.n_threads,
            normalize=record.normalize,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_seqs=s.max_batch_seqs,
        )

    async def unload(self, model_id: str) -> bool:
        """Unload after finishing its queued inputs. Returns False if it was not loaded."""
        async with self._lock:
            loaded = self._loaded.pop(model_id, None)
            if loaded is None:
                resolved = self.store.resolve(model_id)
                loaded = self._loaded.pop(resolved, None)
            if loaded is None:
                return False
            self._aliases = {k: v for k, v in self._aliases.items() if v != loaded.record.id}
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
