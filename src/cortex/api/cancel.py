"""Cancellation as one reusable piece: race a request's work against its client going away.

A client that disconnects (Ctrl-C, a timeout) should stop what it asked for: its queued inputs are
dropped, an import stops at its next step and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from cortex.errors import Cancelled

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the work finished; the work was cancelled."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read; only a disconnect can follow)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone once the client has left and `work` has been cancelled and
    has ended (so nothing it uses is released while it still runs).

    `work` runs in the calling task; one watcher task cancels that task if the client leaves first (one
    task per request, not two and an `asyncio.wait`: this is on every embeddings request's path)."""
    current = asyncio.current_task()
    assert current is not None
    state = {"running": True, "gone": False}

    def left(watch: asyncio.Task) -> None:  # the watcher ended: the client left, or it was cancelled below
        if watch.cancelled():
            return
        watch.exception()  # retrieved: a receive() that failed counts as a client gone, as a disconnect does
        if state["running"]:
            state["gone"] = True
            current.cancel()

    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(left)
    try:
        return await work
    except asyncio.CancelledError:
        # ours (the client left) unless the task was also cancelled from outside (uvicorn's shutdown)
        if state["gone"] and current.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        state["running"] = False  # a `left` already scheduled must not cancel what the task does next
        watch.cancel()


async def in_stoppable_thread(fn: Callable[[threading.Event], T]) -> T:
    """`fn(stop)` on a thread; if the awaiting task is cancelled, `stop` is set and the thread is waited
    for (it checks `stop` between steps and raises `Cancelled`), then the cancellation goes on."""
    stop = threading.Event()
    context = contextvars.copy_context()  # its log lines name the request (cortex.logs.REQUEST_ID)
    thread = asyncio.get_running_loop().run_in_executor(None, context.run, fn, stop)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Cancelled):
            await thread
        raise
