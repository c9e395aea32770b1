"""Pull tasks: resolve, check disk space, download (resumable), verify, import; one task per model.

A task runs in its own thread and reports to the event loop. A second pull of a model that is being
pulled joins the running task. Cancelling deletes the partial files; pausing (Ctrl-C in the CLI,
SIGTERM of the server) keeps them, so the next pull of the same model resumes. Partial downloads live
in `models/.downloads/<folder>/`, which `models list` never shows.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cortex.errors import CortexError, InvalidRequest, ModelNotFound
from cortex.hub.download import Cancelled, download, part_path
from cortex.hub.names import parse_pull_name
from cortex.hub.resolve import Plan, resolve
from cortex.store.ids import folder_name
from cortex.store.store import ModelStore

log = logging.getLogger(__name__)

Status = Literal["downloading", "verifying", "importing", "done", "failed", "cancelled", "paused"]
FINAL = ("done", "failed", "cancelled", "paused")


class InsufficientStorage(CortexError):
    status = 507
    type = "server_error"
    code = "insufficient_storage"


@dataclass
class PullTask:
    id: str
    model: str  # the store id the pull creates
    name: str  # what was asked for
    plan: Plan
    status: Status = "downloading"
    done_bytes: int = 0
    fetched_bytes: int = 0  # transferred by this task (not counting what an earlier pull left)
    error: dict | None = None
    created: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    keep_partial: bool = False
    engine: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict:
        return {
            "task": self.id, "model": self.model, "name": self.name, "status": self.status,
            "total_bytes": self.plan.total_bytes, "done_bytes": self.done_bytes,
            "fetched_bytes": self.fetched_bytes, "files": [f.path for f in self.plan.files], "error": self.error,
        }  # fmt: skip


class PullManager:
    """The pulls of one server; owned by the app's lifespan."""

    def __init__(self, store: ModelStore, min_free_bytes: int) -> None:
        self.store = store
        self.min_free_bytes = min_free_bytes
        self.downloads = store.root / ".downloads"
        self.tasks: dict[str, PullTask] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, task_id: str) -> PullTask:
        task = self.tasks.get(task_id)
        if task is None:
            raise ModelNotFound(task_id, " No pull task has this id.")
        return task

    async def start(self, name: str, quant: str | None = None, engine: str | None = None) -> PullTask:
        """Start pulling `name`, or join the pull of the same model that is running."""
        self._loop = asyncio.get_running_loop()
        plan = await asyncio.to_thread(resolve, parse_pull_name(name), quant)
        if engine is not None and plan.format == "gguf" and engine != "llama-cpp":
            raise InvalidRequest(f"`{plan.model_id}` is a GGUF: only the llama-cpp engine serves it.", param="engine")
        for task in self.tasks.values():
            if task.model == plan.model_id and task.status not in FINAL:
                return task
        if self.store.folder(plan.model_id).exists():  # nothing to do: a finished task says so
            task = PullTask(
                uuid.uuid4().hex[:16], plan.model_id, name, plan, status="done", done_bytes=plan.total_bytes
            )
            self.tasks[task.id] = task
            return task
        workdir = self.downloads / folder_name(plan.model_id)
        self._check_space(plan, workdir)
        task = PullTask(uuid.uuid4().hex[:16], plan.model_id, name, plan, engine=engine)
        self.tasks[task.id] = task
        thread = threading.Thread(target=self._run, args=(task, workdir), name=f"pull-{task.id}", daemon=True)
        self._threads[task.id] = thread
        thread.start()
        return task

    def _check_space(self, plan: Plan, workdir: Path) -> None:
        have = sum(
            part_path(workdir / f.path).stat().st_size for f in plan.files if part_path(workdir / f.path).exists()
        )
        needed = plan.total_bytes - have
        self.store.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.store.root).free
        if free - needed < self.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough disk space to pull `{plan.model_id}`: it needs {needed} more bytes, {free} are free, "
                f"and {self.min_free_bytes} must stay free (min_free_disk_bytes)."
            )

    def cancel(self, task_id: str, keep_partial: bool = False) -> PullTask:
        """Stop a running task: cancel (partial files deleted) or pause (kept for resume)."""
        task = self.get(task_id)
        if task.status not in FINAL:
            task.keep_partial = keep_partial
            task.stop.set()
        return task

    async def wait(self, task: PullTask) -> None:
        """Return once the task's thread has finished."""
        thread = self._threads.get(task.id)
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def pause_running(self) -> list[PullTask]:
        """Ask every running pull to pause (partial files kept); returns them."""
        running = [t for t in self.tasks.values() if t.status not in FINAL]
        for task in running:
            self.cancel(task.id, keep_partial=True)
        return running

    async def pause_all(self) -> None:
        """On shutdown: pause every running pull and wait for its thread."""
        for task in self.pause_running():
            await self.wait(task)

    def _notify(self, task: PullTask, **changes: object) -> None:
        def apply() -> None:
            for key, value in changes.items():
                setattr(task, key, value)
            task.changed.set()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(apply)

    def _run(self, task: PullTask, workdir: Path) -> None:
        plan = task.plan
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        done_before = 0
        fetched = 0
        last = 0.0
        try:
            for remote in plan.files:
                dest = workdir / remote.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists() and dest.stat().st_size == remote.size:
                    done_before += remote.size
                    continue

                def progress(have: int, base: int = done_before) -> None:
                    nonlocal last
                    now = time.monotonic()
                    if now - last >= 0.1:
                        last = now
                        self._notify(task, done_bytes=base + have)

                fetched += download(plan.repo_id, plan.revision, remote, dest, progress=progress, stop=task.stop)
                done_before += remote.size
                self._notify(task, done_bytes=done_before, fetched_bytes=fetched)
            self._notify(task, status="importing", done_bytes=plan.total_bytes, fetched_bytes=fetched)
            source = workdir if plan.format == "sentence-transformers" else workdir / plan.files[0].path
            self.store.import_model(
                plan.model_id, source, name=plan.seed.get("name"), ctx_len=plan.seed.get("ctx_len"),
                move=plan.format == "gguf", engine=task.engine,
            )  # fmt: skip
            shutil.rmtree(workdir, ignore_errors=True)
            self._notify(task, status="done")
        except Cancelled:
            if task.keep_partial:
                self._notify(task, status="paused", fetched_bytes=fetched)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
                self._notify(task, status="cancelled", fetched_bytes=fetched)
        except CortexError as exc:
            if exc.code in ("invalid_model_file", "integrity_error"):
                shutil.rmtree(workdir, ignore_errors=True)  # nothing worth resuming
            self._notify(task, status="failed", error=exc.to_dict(), fetched_bytes=fetched)
        except Exception:
            log.exception("pull %s of %s failed", task.id, task.model)
            error = {"error": {"message": "The pull failed; see the server log.", "type": "server_error",
                               "param": None, "code": "pull_failed"}}  # fmt: skip
            self._notify(task, status="failed", error=error, fetched_bytes=fetched)
