"""The batching scheduler's ordering and failure rules, with a stub engine (no inference here:
the API tests cover the real engine), and what a shutdown does to its queue."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cortex.errors import EngineFailure, InvalidRequest, Overloaded, ShuttingDown
from cortex.runtime.scheduler import BatchScheduler
from tests.unit.support import StubEngine


def run(coro):
    return asyncio.run(coro)


def test_each_request_gets_its_own_vectors_in_order() -> None:
    async def main():
        engine = StubEngine()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        reqs = [[[i * 10 + j] * (1 + (i + j) % 4) for j in range(5)] for i in range(20)]
        outs = await asyncio.gather(*(sched.embed(r) for r in reqs))
        await sched.close()
        for r, out in zip(reqs, outs, strict=True):
            assert out[:, 0].tolist() == [float(s[0]) for s in r]
        for batch in engine.batches:
            assert len(batch) <= 3
            assert len(batch) == 1 or sum(map(len, batch)) <= 8
        assert len(engine.batches) < 100  # inputs were packed, not run one by one

    run(main())


def test_a_long_input_runs_alone_and_nothing_starves() -> None:
    async def main():
        engine = StubEngine()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        out = await asyncio.gather(sched.embed([[1] * 40]), sched.embed([[2], [3]]))
        await sched.close()
        assert out[0][:, 0].tolist() == [1.0] and out[1][:, 0].tolist() == [2.0, 3.0]
        assert [len(b) for b in engine.batches if b[0][0] == 1] == [1]

    run(main())


def test_a_failed_batch_fails_only_its_requests_and_the_loop_lives() -> None:
    async def main():
        engine = StubEngine(fail_on=7)
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        with pytest.raises(EngineFailure):
            await sched.embed([[7]])
        ok = await sched.embed([[5], [6]])
        await sched.close()
        assert ok[:, 0].tolist() == [5.0, 6.0]

    run(main())


class _Misbehaving(StubEngine):
    """One worker; input 7 gets one row too many, input 8 raises a BaseException that is no Exception."""

    def embed(self, seqs):
        if seqs[0][0] == 8:
            raise SystemExit("a library that exits")
        rows = super().embed(seqs)
        return np.concatenate([rows, rows[:1]]) if seqs[0][0] == 7 else rows


def test_an_engine_that_misbehaves_fails_its_batch_and_the_worker_lives_on() -> None:
    """Wrong row counts and BaseExceptions are a failed batch (500), not a hung request, a dead worker or a
    close() that never returns."""

    async def main():
        engine = _Misbehaving()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        for bad in (7, 8):
            with pytest.raises(EngineFailure):
                await asyncio.wait_for(sched.embed([[bad]]), 10)
        ok = await asyncio.wait_for(sched.embed([[5], [6]]), 10)
        assert ok[:, 0].tolist() == [5.0, 6.0]
        assert sched.queued == 0 and sched.running == 0
        await asyncio.wait_for(sched.close(), 10)

    run(main())


def test_a_full_queue_answers_overloaded() -> None:
    async def main():
        engine = StubEngine()
        engine.gate.clear()  # the engine is busy
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=4)
        first = asyncio.create_task(sched.embed([[1]]))
        await asyncio.sleep(0.05)  # the first batch is now inside the engine
        waiting = asyncio.create_task(sched.embed([[2], [3], [4]]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await sched.embed([[5], [6]])
        engine.gate.set()
        assert (await first)[:, 0].tolist() == [1.0]
        assert (await waiting)[:, 0].tolist() == [2.0, 3.0, 4.0]
        await sched.close()

    run(main())


def test_a_request_larger_than_the_whole_queue_is_a_client_error() -> None:
    """Retrying could never help it: a 400 naming the limit, not 503 'retry shortly' on an idle server."""

    async def main():
        sched = BatchScheduler(StubEngine(), model_id="m", max_queue_inputs=4)
        with pytest.raises(InvalidRequest) as caught:
            await sched.embed([[1]] * 5)
        assert caught.value.status == 400 and "max_queue_inputs" in caught.value.message
        assert (await sched.embed([[1]] * 4)).shape[0] == 4  # the limit itself is served
        await sched.close()

    run(main())


def test_a_cancelled_request_is_dropped_from_the_queue() -> None:
    async def main():
        engine = StubEngine()
        engine.gate.clear()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=100)
        busy = asyncio.create_task(sched.embed([[1]]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(sched.embed([[99]]))
        await asyncio.sleep(0)
        gone.cancel()
        engine.gate.set()
        await busy
        await sched.close()
        assert all(s[0] != 99 for b in engine.batches for s in b)

    run(main())


class ParallelStub(StubEngine):
    """Two workers: records how many embed calls overlap."""

    workers = 2

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def embed(self, seqs):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            threading.Event().wait(0.02)
            return super().embed(seqs)
        finally:
            with self.lock:
                self.active -= 1


def test_engines_with_workers_run_batches_in_parallel() -> None:
    async def main():
        engine = ParallelStub()
        engine.max_batch_seqs = 1
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        lone = await sched.embed([[9]])
        outs = await asyncio.gather(*(sched.embed([[i], [i + 100]]) for i in range(6)))
        await sched.close()
        assert lone[:, 0].tolist() == [9.0]
        for i, out in enumerate(outs):
            assert out[:, 0].tolist() == [float(i), float(i + 100)]
        assert engine.most_active == 2  # never more than `workers` at once, and both used

    run(main())


class _MeetingEngine(StubEngine):
    """Two workers, one input per run; each run waits (up to 10 s) until another run is inside with it."""

    workers = 2
    max_batch_seqs = 1

    def __init__(self) -> None:
        super().__init__()
        self.meet = threading.Barrier(2, timeout=10)

    def embed(self, seqs):
        self.meet.wait()  # BrokenBarrierError (a failed batch) if the other worker never came
        return super().embed(seqs)


def test_one_request_spreads_its_inputs_over_every_worker() -> None:
    """A lone request of several inputs wakes as many workers as it has inputs, not one."""

    async def main():
        engine = _MeetingEngine()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=100)
        out = await sched.embed([[1], [2], [3], [4]])
        await sched.close()
        assert out[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]

    run(main())


class _SoloEngine(StubEngine):
    """Takes the `alone` hint (`solo_runs`) and records it per run."""

    workers = 2
    max_batch_seqs = 1
    solo_runs = True

    def __init__(self) -> None:
        super().__init__()
        self.hints: list[bool] = []

    def embed(self, seqs, *, alone=False):
        self.hints.append(alone)
        return super().embed(seqs)


def test_a_run_with_nothing_beside_it_is_told_it_runs_alone() -> None:
    async def main():
        engine = _SoloEngine()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=100)
        for i in range(3):  # one query at a time: each has the machine to itself
            await sched.embed([[i]])
        assert engine.hints == [True, True, True]
        engine.gate.clear()  # hold the runs: the other inputs queue behind the first
        many = asyncio.create_task(sched.embed([[10], [11], [12], [13]]))
        while len(engine.hints) < 5:  # both workers inside the engine, holding a run each
            await asyncio.sleep(0.001)
        assert engine.hints[3:] == [False, False]  # each taken while others were queued
        engine.gate.set()
        await many
        await sched.close()
        assert len(engine.hints) == 7

    run(main())


def test_a_run_after_the_last_one_ended_is_alone_even_before_the_loop_hands_out_its_result() -> None:
    """Whether a run is alone asks what is inside the engine, not what the event loop (busy parsing or
    answering other requests) has yet to hand out."""

    async def main():
        engine = _SoloEngine()
        engine.workers = 1
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=100)
        engine.gate.clear()
        first = asyncio.create_task(sched.embed([[1]]))
        second = asyncio.create_task(sched.embed([[2]]))
        while sched.queued != 1 or not engine.hints:  # run 1 in the engine, request 2 queued behind it
            await asyncio.sleep(0.001)
        engine.gate.set()
        deadline = time.monotonic() + 10
        while len(engine.hints) < 2 and time.monotonic() < deadline:  # the loop stays blocked meanwhile:
            time.sleep(0.001)  # run 1's result is not handed out when the worker takes run 2
        await asyncio.gather(first, second)
        await sched.close()
        assert engine.hints[1] is True

    run(main())


class _HeldEngine(StubEngine):
    """Holds each batch until `gate` is set, and says when one has started."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.clear()
        self.started = threading.Event()

    def embed(self, seqs):
        self.started.set()
        return super().embed(seqs)


def test_fail_pending_fails_what_is_queued_and_lets_the_running_batch_finish() -> None:
    async def main() -> None:
        engine = _HeldEngine()  # batches of at most 3 inputs, one at a time
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        running = asyncio.ensure_future(sched.embed([[1], [2]]))
        assert await asyncio.to_thread(engine.started.wait, 10)
        queued = asyncio.ensure_future(sched.embed([[3], [4]]))
        await asyncio.sleep(0)  # it is in the queue now
        sched.fail_pending(ShuttingDown())
        with pytest.raises(ShuttingDown):
            await queued
        with pytest.raises(ShuttingDown):
            await sched.embed([[5]])
        engine.gate.set()
        assert (await running)[:, 0].tolist() == [1.0, 2.0]
        await sched.close()
        assert engine.batches == [[[1], [2]]]

    asyncio.run(main())
