"""Pull tasks in process: a lookup that outlasts the answer, and what it does once the hub has spoken.

The hub is not the point here (tests/e2e/test_pull.py runs real pulls against a hub double): resolution and the
transfer are replaced by functions that wait on events, so the order of events is the test's to choose."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from cortex.errors import Conflict, PullTaskNotFound
from cortex.hub import tasks
from cortex.hub.resolve import Plan, RemoteFile
from cortex.hub.tasks import PullManager
from cortex.importer import Importer
from cortex.store.store import ModelStore

PLAN = Plan("acme/x:F16", "acme/x", "main", [RemoteFile("x-F16.gguf", 100, None)], "gguf")


async def _until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
def slow_hub(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """`acme/slow` resolves (to the same model as `acme/x`) only once the returned event is set; downloads
    report half their bytes, then wait until cancelled."""
    gate = threading.Event()

    def resolve(parsed, quant):
        if parsed.repo_id == "acme/slow":
            gate.wait(10)
        return PLAN

    def download(repo_id, revision, remote, dest, *, progress, stop):
        progress(50)
        stop.wait(10)
        raise tasks.Cancelled

    monkeypatch.setattr(tasks, "resolve", resolve)
    monkeypatch.setattr(tasks, "download", download)
    monkeypatch.setattr(tasks, "ANSWER_WITHIN_S", 0.2)
    return gate


def test_a_slow_lookup_that_lands_on_a_running_pull_follows_it(tmp_path: Path, slow_hub: threading.Event) -> None:
    async def scenario() -> None:
        pulls = PullManager(Importer(ModelStore(tmp_path / "models")))
        running = await pulls.start("acme/x")
        assert running.status == "downloading" and running.model == "acme/x:F16"
        slow = await pulls.start("acme/slow")
        assert slow.status == "resolving" and slow.model == "acme/slow" and slow.view().total_bytes == 0
        assert (await pulls.start("acme/slow")).id == slow.id  # the same lookup is joined, not repeated
        slow_hub.set()
        await _until(lambda: slow.status != "resolving")
        assert slow.model == "acme/x:F16" and slow.status == "downloading" and slow.view().total_bytes == 100
        pulls.cancel(running.id, keep_partial=True)
        await pulls.wait(running)
        await _until(lambda: slow.status == "paused")
        assert running.status == "paused"

    asyncio.run(scenario())


def test_a_lookup_cancelled_before_the_hub_answers_stays_cancelled(tmp_path: Path, slow_hub: threading.Event) -> None:
    async def scenario() -> None:
        pulls = PullManager(Importer(ModelStore(tmp_path / "models")))
        slow = await pulls.start("acme/slow")
        assert pulls.cancel(slow.id).status == "cancelled"
        slow_hub.set()
        await asyncio.sleep(0.3)
        assert slow.status == "cancelled" and not (tmp_path / "models" / ".downloads").exists()

    asyncio.run(scenario())


def test_an_import_of_an_id_being_pulled_is_refused_at_once(tmp_path: Path, slow_hub: threading.Event) -> None:
    """Issue 12.13: the import used to run whole while the pull downloaded everything, then the pull failed
    "already exists" and left its download behind."""

    async def scenario() -> None:
        store = ModelStore(tmp_path / "models")
        pulls = PullManager(Importer(store))
        running = await pulls.start("acme/x")
        assert running.status == "downloading"
        with pytest.raises(Conflict, match="being imported or pulled"):
            Importer(store).run("acme/x:F16", tmp_path / "any.gguf")
        pulls.cancel(running.id)
        await pulls.wait(running)
        assert not store.is_reserved("acme/x:F16")  # a cancelled pull gives the id back
        with store.reserve("acme/x:F16"), pytest.raises(Conflict):  # and the other way round
            await pulls.start("acme/x")

    asyncio.run(scenario())


def test_a_pull_of_a_model_stored_meanwhile_drops_its_partial_download(
    tmp_path: Path, slow_hub: threading.Event
) -> None:
    """Issue 12.13: a paused `.part` stayed in `.downloads` after the model came another way, and the
    next pull said "done" with it still there."""
    models = tmp_path / "models"
    leftover = models / ".downloads" / "acme+x@F16"
    kept = models / ".downloads" / "acme+y@F16"  # a paused pull of a model not stored: kept for its resume
    for folder in (leftover, kept):
        folder.mkdir(parents=True)
        (folder / "x.gguf.part").write_bytes(b"\0" * 50)
    (models / "acme+x@F16").mkdir()
    PullManager(Importer(ModelStore(models)))  # at start-up
    assert not leftover.exists() and kept.exists()

    async def scenario() -> None:
        pulls = PullManager(Importer(ModelStore(models)))
        leftover.mkdir()  # left while the server ran
        task = await pulls.start("acme/x")
        assert task.status == "done" and not leftover.exists()

    asyncio.run(scenario())


def test_finished_tasks_are_pruned(tmp_path: Path, slow_hub: threading.Event) -> None:
    """Issue 12.13: every finished task was kept (3,500 after a day of polling clients)."""

    async def scenario() -> None:
        models = tmp_path / "models"
        pulls = PullManager(Importer(ModelStore(models)))
        (models / "acme+x@F16").mkdir()
        first = await pulls.start("acme/x")
        assert first.status == "done"
        for _ in range(tasks.KEEP_FINISHED + 20):
            await pulls.start("acme/x")
        assert len(pulls.tasks) == tasks.KEEP_FINISHED + 1
        with pytest.raises(PullTaskNotFound):
            pulls.get(first.id)

    asyncio.run(scenario())
