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
    has ended (so nothing it uses is released while it still runs)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise ClientGone
    return task.result()


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
