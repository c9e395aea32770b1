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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cortex.engine.kinds import KINDS, ImportOptions
from cortex.errors import (
    Cancelled,
    CortexError,
    IntegrityError,
    InvalidModelFile,
    InvalidRequest,
    PullTaskNotFound,
    error_body,
)
from cortex.hub.download import download, part_path
from cortex.hub.names import parse_pull_name
from cortex.hub.resolve import Plan, resolve
from cortex.importer import Importer
from cortex.schemas import PullState, PullStatus
from cortex.store.ids import folder_name
from cortex.store.store import Reservation

log = logging.getLogger(__name__)
T = TypeVar("T")

# POST /v1/models/pull answers within this: a name the hub resolves quickly is checked before the answer
# (404, 400, 507 come back at once); a slow hub gets a task in status "resolving" that goes on alone.
ANSWER_WITHIN_S = 2.5
FINAL = frozenset({"done", "failed", "cancelled", "paused"})
KEEP_FINISHED = 100  # finished tasks kept for their status; older ones are forgotten


def _in_daemon_thread(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """Run `fn` in a thread of its own that never holds up the server's exit (the default executor's
    threads are waited for at shutdown, and a hub can take its read timeout, retried, to answer)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="pull-resolve", daemon=True).start()
    return future


_PULL_FAILED = error_body("The pull failed; see the server log.", type="server_error", code="pull_failed")


@dataclass
class PullTask:
    id: str
    model: str  # the store id the pull creates (what was asked for, while resolving)
    name: str  # what was asked for
    plan: Plan | None  # None while resolving
    status: PullState = "downloading"
    done_bytes: int = 0
    fetched_bytes: int = 0  # transferred by this task (not counting what an earlier pull left)
    error: dict | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    keep_partial: bool = False
    reservation: Reservation | None = None  # the store id held while the task downloads and imports
    engine: str | None = None
    quant: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> PullStatus:
        """The task as clients see it."""
        plan = self.plan
        return PullStatus(
            task=self.id, model=self.model, name=self.name, status=self.status,
            total_bytes=plan.total_bytes if plan else 0, done_bytes=self.done_bytes,
            fetched_bytes=self.fetched_bytes, files=[f.path for f in plan.files] if plan else [],
            error=self.error,
        )  # fmt: skip


class PullManager:
    """The pulls of one server; owned by the app's lifespan."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.store = importer.store
        self.downloads = self.store.root / ".downloads"
        self.tasks: dict[str, PullTask] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: set[asyncio.Task] = set()
        self._sweep_downloads()

    def _sweep_downloads(self) -> None:
        """Drop partial downloads of models that are in the store by now (imported another way)."""
        if self.store.read_only or not self.downloads.is_dir():
            return
        for entry in self.downloads.iterdir():
            if (self.store.root / entry.name).exists():
                shutil.rmtree(entry, ignore_errors=True)

    def _add(self, task: PullTask) -> None:
        """Record `task`, forgetting the oldest finished tasks beyond KEEP_FINISHED."""
        self.tasks[task.id] = task
        finished = [t for t in self.tasks.values() if t.status in FINAL and t is not task]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.tasks[old.id]
            self._threads.pop(old.id, None)

    def get(self, task_id: str) -> PullTask:
        task = self.tasks.get(task_id)
        if task is None:
            raise PullTaskNotFound(task_id)
        return task

    async def start(self, name: str, quant: str | None = None, engine: str | None = None) -> PullTask:
        """Start pulling `name`, or join the pull of the same model that is running. Answers within
        ANSWER_WITHIN_S: if the hub has not said what `name` is by then, the task resolves it alone."""
        self.store.require_writable()  # before anything is downloaded into the store's folder
        self._loop = asyncio.get_running_loop()
        parsed = parse_pull_name(name)
        for task in self.tasks.values():
            if task.status == "resolving" and (task.name, task.quant, task.engine) == (name, quant, engine):
                return task
        resolving = _in_daemon_thread(resolve, parsed, quant)
        try:
            plan = await asyncio.wait_for(asyncio.shield(resolving), ANSWER_WITHIN_S)
        except TimeoutError:
            task = PullTask(uuid.uuid4().hex[:16], name, name, None, status="resolving", engine=engine, quant=quant)
            self._add(task)
            resolving.add_done_callback(lambda done: self._resolved(task, done))
            return task
        return self._begin(name, plan, engine)

    def _resolved(self, task: PullTask, done: asyncio.Future) -> None:
        """A slow resolution finished: go on with `task`, or fail it with the hub's answer."""
        if task.status != "resolving" or done.cancelled():  # cancelled meanwhile, or the server is stopping
            return
        try:
            plan = done.result()
            begun = self._begin(task.name, plan, task.engine, into=task)
        except CortexError as exc:
            task.status, task.error = "failed", exc.to_dict()
        except Exception:
            log.exception("pull %s of %s failed while resolving", task.id, task.name)
            task.status, task.error = "failed", _PULL_FAILED
        else:
            if begun is not task:  # joined a running pull of the same model: this task follows it
                task.model, task.plan, task.status = begun.model, begun.plan, begun.status
                task.done_bytes, task.error = begun.done_bytes, begun.error
                self._follow(task, begun)
        task.changed.set()

    def _follow(self, task: PullTask, other: PullTask) -> None:
        """Mirror `other`'s progress into `task` until it ends."""

        async def mirror() -> None:
            while task.status not in FINAL:
                other.changed.clear()
                for key in ("status", "done_bytes", "fetched_bytes", "error"):
                    setattr(task, key, getattr(other, key))
                task.changed.set()
                if other.status in FINAL:
                    return
                await other.changed.wait()

        watcher = asyncio.get_running_loop().create_task(mirror())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _begin(self, name: str, plan: Plan, engine: str | None, into: PullTask | None = None) -> PullTask:
        """Start the download of a resolved plan (in `into`, a task that was resolving), or join one."""
        if engine is not None and plan.format == "gguf" and not (engine in KINDS and KINDS[engine].files):
            serving = ", ".join(k.name for k in KINDS.values() if k.files)
            raise InvalidRequest(f"`{plan.model_id}` is a GGUF: only the {serving} engine serves it.", param="engine")
        for task in self.tasks.values():
            if task is not into and task.model == plan.model_id and task.status not in FINAL | {"resolving"}:
                return task
        task = into or PullTask(uuid.uuid4().hex[:16], plan.model_id, name, plan, engine=engine)
        task.model, task.plan = plan.model_id, plan
        workdir = self.downloads / folder_name(plan.model_id)
        if self.store.folder(plan.model_id).exists():  # nothing to do: a finished task says so
            shutil.rmtree(workdir, ignore_errors=True)  # what an earlier pull left is not needed any more
            task.status, task.done_bytes = "done", plan.total_bytes
            self._add(task)
            return task
        self._check_space(plan, workdir)
        task.reservation = self.store.reserve(plan.model_id)  # 409 if an import of this id is running
        task.status = "downloading"
        self._add(task)
        thread = threading.Thread(target=self._run, args=(task, workdir), name=f"pull-{task.id}", daemon=True)
        self._threads[task.id] = thread
        thread.start()
        return task

    def _check_space(self, plan: Plan, workdir: Path) -> None:
        have = sum(
            part_path(workdir / f.path).stat().st_size for f in plan.files if part_path(workdir / f.path).exists()
        )
        self.store.check_space(plan.total_bytes - have, f"pull `{plan.model_id}`")

    def cancel(self, task_id: str, keep_partial: bool = False) -> PullTask:
        """Stop a running task: cancel (partial files deleted) or pause (kept for resume)."""
        task = self.get(task_id)
        if task.status == "resolving":  # no thread yet: nothing downloaded, nothing to keep
            task.status = "paused" if keep_partial else "cancelled"
            task.changed.set()
        elif task.status not in FINAL:
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
            self.importer.run(
                plan.model_id, source, ImportOptions(name=plan.seed.get("name"), ctx_len=plan.seed.get("ctx_len")),
                engine=task.engine, move=plan.format == "gguf", label=f"{plan.repo_id}/{plan.files[0].path}",
                reserved=True,
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
            if isinstance(exc, (InvalidModelFile, IntegrityError)):
                shutil.rmtree(workdir, ignore_errors=True)  # nothing worth resuming
            self._notify(task, status="failed", error=exc.to_dict(), fetched_bytes=fetched)
        except Exception:
            log.exception("pull %s of %s failed", task.id, task.model)
            self._notify(task, status="failed", error=_PULL_FAILED, fetched_bytes=fetched)
        finally:
            if task.reservation is not None:
                task.reservation.release()
