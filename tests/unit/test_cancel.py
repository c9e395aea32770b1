"""`unless_disconnected`: the work runs in the caller's task, and a client that leaves cancels it, and only it."""

from __future__ import annotations

import asyncio

import pytest

from cortex.api.cancel import ClientGone, unless_disconnected

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Client:
    """What `unless_disconnected` reads of a request: receive() answers a disconnect once `leave()`."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict:
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_the_result_when_the_work_ends_first_and_no_cancellation_later() -> None:
    client = _Client()

    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await unless_disconnected(client, work()) == 7  # type: ignore[arg-type]
    client.leave()  # after the answer: must not cancel what the task does next
    for _ in range(5):
        await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_client_that_leaves_cancels_the_work_which_ends_before_client_gone() -> None:
    client = _Client()
    events: list[str] = []

    async def work() -> int:
        try:
            await asyncio.sleep(60)
        finally:
            events.append("work ended")
        return 1

    asyncio.get_running_loop().call_later(0.01, client.leave)
    with pytest.raises(ClientGone):
        try:
            await unless_disconnected(client, work())  # type: ignore[arg-type]
        finally:
            events.append("returned")
    assert events == ["work ended", "returned"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # the task goes on normally


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    client = _Client()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(unless_disconnected(client, work()))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_disconnect_as_the_work_ends_gives_one_answer_and_no_stray_cancel() -> None:
    client = _Client()

    async def work() -> int:
        client.leave()  # the watcher's wake-up lands in the same turn as the result
        return 3

    assert await unless_disconnected(client, work()) == 3  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_works_own_error_goes_through() -> None:
    async def work() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await unless_disconnected(_Client(), work())  # type: ignore[arg-type]


async def test_a_receive_that_fails_counts_as_a_client_gone() -> None:
    class Broken:
        async def receive(self) -> dict:
            raise OSError("connection reset")

    async def work() -> None:
        await asyncio.sleep(60)

    with pytest.raises(ClientGone):
        await unless_disconnected(Broken(), work())  # type: ignore[arg-type]
