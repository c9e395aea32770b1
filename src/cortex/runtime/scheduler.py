"""Per-model dynamic batching: requests queue their inputs here, and `engine.workers` threads of the model's
own each take the next batch as soon as they are free (under the engine's token budget and sequence
limit) and run it (llama.cpp and ONNX Runtime release the GIL); each input's future is completed on the
event loop once its batch is done. A worker takes its next batch itself, so a busy event loop (parsing
requests, writing responses) never keeps a free core waiting for work. A failed batch fails exactly its own
inputs; the workers keep serving.

The queue is shared fairly between requests, in tokens (fair queuing): each request's inputs wait in
their own line, in order. A virtual clock stands for the tokens each waiting request would have had if the
engine were shared exactly: each input taken moves it by its tokens over the number of requests waiting. A
request arriving starts at the clock, its k-th input is tagged with that start plus the tokens of its first
k inputs, and batches take the smallest tags first. So requests waiting together get equal shares of
tokens (long inputs do not crowd out short ones), and a one-input request arriving among big ones is
taken once a worker is free, before every input of theirs tagged after its own: next, or after about one
of their inputs, not after every input queued before it (bench/mixed_load.py). Nothing starves: the clock
passes every tag in time.

The engine says how it wants work: llama.cpp takes many sequences packed into one batch on one worker;
ONNX Runtime takes one input per run on several workers, and an engine with `solo_runs` is told which run
has the machine to itself (no other run in flight, nothing queued), as a lone query has.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cortex.engine.base import Engine
from cortex.errors import CortexError, EngineFailure, InvalidRequest, ModelNotLoaded, Overloaded
from cortex.logs import REQUEST_ID

if TYPE_CHECKING:
    from cortex.metrics import ModelMeter

log = logging.getLogger(__name__)

# How many requests whose next input does not fit the batch's budget the packer passes over, looking for
# one that does. The first input is always taken, so nothing waits forever.
_LOOKAHEAD = 256


@dataclass(slots=True)
class _Item:
    tokens: Sequence[int]
    future: asyncio.Future
    start: int = 0  # where its second part begins (Engine.embed's `starts`)
    request_id: str | None = None  # the request it came in, for the log (cortex.logs)


@dataclass(slots=True)
class _Request:
    """The inputs of one `embed` call not yet taken, in order; `begins`: the virtual time at which its next
    input begins (its tag, the time it ends, adds that input's tokens)."""

    items: deque[_Item]
    begins: float


class BatchScheduler:
    """Queue and worker threads for one loaded model. Made and used on one event loop; the queue's state
    is shared with the workers under `_lock`."""

    def __init__(
        self, engine: Engine, *, model_id: str, max_queue_inputs: int, meter: ModelMeter | None = None
    ) -> None:
        """`meter`: told of each batch taken and each request's inputs answered (cortex.metrics)."""
        self.engine = engine
        self.model_id = model_id
        self.max_queue_inputs = max_queue_inputs
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # notified when inputs are queued, and to stop
        # (tag of its next input, push number, request): the smallest tag is served first
        self._ready: list[tuple[float, int, _Request]] = []
        self._pushes = itertools.count()  # breaks ties between equal tags: the one queued longest first
        self._clock = 0.0  # where a request arriving now starts
        self._queued = 0
        self._busy = 0  # batches taken whose results the event loop has not yet handed out
        self._in_engine = 0  # batches inside engine.embed now (what `alone` asks about: not the loop's lag)
        self._running_inputs = 0
        self._stopping = False  # the workers return once it is set
        self._idle = asyncio.Event()  # nothing queued, nothing running, every result handed out
        self._idle.set()
        self._closed = False
        self._refusal: CortexError | None = None  # set by fail_pending: the answer to every new input
        self._solo = bool(getattr(engine, "solo_runs", False))
        self._meter = meter
        # threads start with an empty context: not that of the request that loaded the model
        self._threads = [
            threading.Thread(target=self._serve, name=f"engine-{model_id}-{i}", daemon=True)
            for i in range(max(1, engine.workers))
        ]
        for thread in self._threads:
            thread.start()

    async def embed(self, seqs: Sequence[Sequence[int]], starts: int | Sequence[int] = 0) -> np.ndarray:
        """Vectors for `seqs` (each at most `engine.n_ctx` tokens), one row per sequence, in order; each
        with `starts` (one for all, or one per sequence): where its second part begins (see Engine.embed)."""
        if self._closed:
            raise ModelNotLoaded(self.model_id)
        if self._refusal is not None:
            raise self._refusal.with_traceback(None)
        if len(seqs) > self.max_queue_inputs:  # could never fit, however long the client retried
            raise InvalidRequest(
                f"The request has {len(seqs)} inputs; `{self.model_id}` queues at most {self.max_queue_inputs} "
                "(max_queue_inputs): send fewer inputs per request.",
                param="input",
            )
        # only this loop adds to `_queued` (workers take from it), so read unlocked it is at least what waits
        if self._queued + len(seqs) > self.max_queue_inputs:
            raise Overloaded(
                f"The server is busy: {self._queued} inputs are waiting for `{self.model_id}` "
                f"(limit {self.max_queue_inputs}). Retry shortly."
            )
        loop = self._loop
        futures = [loop.create_future() for _ in seqs]
        request_id = REQUEST_ID.get()
        each = [starts] * len(seqs) if isinstance(starts, int) else starts
        items = deque(_Item(s, f, n, request_id) for s, f, n in zip(seqs, futures, each, strict=True))
        with self._work:
            self._queued += len(items)
            self._push(_Request(items, self._clock))
            self._work.notify(len(items))  # as many idle workers as there are inputs to take
        self._idle.clear()
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:  # drop this request's inputs that have not run yet
                f.cancel()
            raise
        if self._meter is not None:
            self._meter.embedded(len(seqs), sum(map(len, seqs)))
        return np.stack(rows)

    @property
    def queued(self) -> int:
        """Inputs waiting for a batch (those of a client that left count until a worker drops them)."""
        return self._queued

    @property
    def running(self) -> int:
        """Inputs in the engine batches running now."""
        return self._running_inputs

    def _push(self, request: _Request) -> None:
        """Queue `request` by the tag of its next input. Under the lock."""
        if request.items:
            tag = request.begins + len(request.items[0].tokens)
            heapq.heappush(self._ready, (tag, next(self._pushes), request))

    def _take_batch(self) -> list[_Item]:
        """The inputs with the smallest tags that fit the engine's budget together (first fit), each
        request's in its order. Under the lock."""
        budget = self.engine.max_batch_tokens
        max_seqs = self.engine.max_batch_seqs
        batch: list[_Item] = []
        used = 0
        passed: list[_Request] = []  # requests whose next input did not fit this batch
        while self._ready and len(batch) < max_seqs and used < budget and len(passed) < _LOOKAHEAD:
            request = heapq.heappop(self._ready)[2]
            items = request.items
            while items and items[0].future.done():  # cancelled: its client went away
                items.popleft()
                self._queued -= 1
            if not items:
                continue
            n = len(items[0].tokens)
            if batch and used + n > budget:
                passed.append(request)
                continue
            batch.append(items.popleft())
            self._queued -= 1
            used += n
            request.begins += n
            self._clock += n / (len(self._ready) + len(passed) + 1)
            self._push(request)
        for request in passed:
            self._push(request)
        if batch and self._meter is not None:
            self._meter.batch(len(batch), used)
        return batch

    def _serve(self) -> None:
        """A worker thread: takes the next batch as soon as it is free, runs it, hands the outcome to the loop."""
        while True:
            with self._work:
                while not self._queued and not self._stopping:
                    self._work.wait()
                if self._stopping:
                    return
                batch = self._take_batch()
                if not batch:  # only inputs of clients that left were queued
                    if not self._queued and not self._busy and not self._loop.is_closed():
                        self._loop.call_soon_threadsafe(self._check_idle)
                    continue
                alone = self._solo and self._in_engine == 0 and self._queued == 0
                self._busy += 1
                self._in_engine += 1
                self._running_inputs += len(batch)
            out, exc = self._execute(batch, alone)
            with self._lock:
                self._in_engine -= 1
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, out, exc)
            except RuntimeError:  # the loop is closed (a process ending without closing its models)
                return

    def _execute(self, batch: list[_Item], alone: bool) -> tuple[np.ndarray | None, CortexError | None]:
        """The engine's rows for `batch`, or the error to answer its inputs with."""
        seqs = [i.tokens for i in batch]
        starts = [i.start for i in batch]
        args = (seqs, starts) if any(starts) else (seqs,)  # engines that pool every token need not know
        try:
            out = self.engine.embed(*args, alone=True) if alone else self.engine.embed(*args)
            if len(out) != len(batch):
                raise RuntimeError(f"the engine gave {len(out)} rows for {len(batch)} inputs")
            return out, None
        except CortexError as exc:
            return None, exc
        except BaseException:  # whatever it raised, the thread lives on and the batch gets an answer
            # a batch serves several requests: its line names them all, `[req ID1,ID2]`
            ids = ",".join(sorted({i.request_id for i in batch if i.request_id}))
            in_requests = REQUEST_ID.set(ids or None)
            try:
                log.exception("engine failed on a batch of %d inputs for %s", len(batch), self.model_id)
            finally:
                REQUEST_ID.reset(in_requests)
            return None, EngineFailure(f"The engine failed while embedding with `{self.model_id}`.")

    def _deliver(self, batch: list[_Item], out: np.ndarray | None, exc: CortexError | None) -> None:
        """On the loop: complete the futures of `batch` (those whose client is still there)."""
        try:
            if exc is not None:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                for item, row in zip(batch, out, strict=True):  # type: ignore[arg-type]
                    if not item.future.done():
                        item.future.set_result(row)
        finally:
            with self._lock:
                self._busy -= 1
                self._running_inputs -= len(batch)
            self._check_idle()

    def _check_idle(self) -> None:
        with self._lock:
            idle = not self._queued and not self._busy
        if idle:
            self._idle.set()

    def fail_pending(self, exc: CortexError) -> None:
        """Fail the inputs not yet in a batch with `exc`, and every later one too; running batches finish.

        For a shutdown whose grace is running out: a clear error now beats a request cut off later."""
        self._refusal = exc
        with self._lock:
            waiting = [item for _, _, request in self._ready for item in request.items]
            self._ready.clear()
            self._queued = 0
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(exc)
        self._check_idle()  # idle now, unless batches are running: their results mark it

    async def close(self) -> None:
        """Finish the inputs already queued, then stop the worker threads."""
        self._closed = True
        await self._idle.wait()
        with self._work:
            self._stopping = True
            self._work.notify_all()
        for thread in self._threads:  # idle, waiting for work: they return at once
            thread.join()
