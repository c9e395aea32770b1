"""How the scheduler shares its queue between requests (fair queuing in tokens), with a stub engine: a small
request is not starved by big ones queued before it, requests take turns, long inputs do not buy a bigger
share, and the rest of the queue's rules (cancellation, the limit, packing, shutdown) still hold."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cortex.errors import Overloaded, ShuttingDown
from cortex.runtime.scheduler import BatchScheduler
from tests.unit.support import StubEngine


def inputs(request: int, count: int, length: int = 2) -> list[list[int]]:
    """`count` inputs of `length` tokens; input j of request r starts with id 100 * r + j, so a batch tells
    whose inputs it ran."""
    return [[100 * request + j] * length for j in range(count)]


def owner(seq: list[int]) -> int:
    return seq[0] // 100


async def queue_behind_a_running_batch(
    sched: BatchScheduler, engine: StubEngine, requests: list[list[list[int]]]
) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Holds the engine on a batch of its own (id 0), then queues `requests` in order, each as its own
    request: all of them wait in the queue at once. The caller opens `engine.gate`."""
    engine.gate.clear()
    blocker = asyncio.create_task(sched.embed([[0]]))
    assert await asyncio.to_thread(engine.entered.wait, 10)
    tasks = []
    for seqs in requests:
        tasks.append(asyncio.create_task(sched.embed(seqs)))
        await asyncio.sleep(0)  # it reaches the queue before the next one: arrival order is the list's
    total = sum(map(len, requests))
    while sched.queued < total:
        await asyncio.sleep(0)
    return blocker, tasks


def one_at_a_time() -> StubEngine:
    """An engine like ONNX Runtime's: one input per run (one worker, so the order is exact)."""
    return StubEngine(max_batch_seqs=1, max_batch_tokens=64)


def test_a_one_input_request_is_served_before_big_requests_queued_ahead_of_it_finish() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        big = [inputs(r, 100, length=8) for r in (1, 2, 3)]
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [*big, inputs(9, 1, length=4)])
        small = tasks.pop()
        engine.gate.set()
        assert (await small)[:, 0].tolist() == [900.0]
        order = [owner(b[0]) for b in engine.batches[1:]]
        assert order.index(9) <= 3  # at most one input of each big request before it, not 300
        await asyncio.gather(blocker, *tasks)
        await sched.close()
        assert len(engine.batches) == 1 + 300 + 1

    asyncio.run(main())


def test_requests_of_equal_inputs_take_turns() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [inputs(r, 3) for r in (1, 2, 3)])
        engine.gate.set()
        outs = await asyncio.gather(*tasks)
        await blocker
        await sched.close()
        assert [b[0][0] for b in engine.batches[1:]] == [100, 200, 300, 101, 201, 301, 102, 202, 302]
        for r, out in zip((1, 2, 3), outs, strict=True):  # each request's rows still in its own order
            assert out[:, 0].tolist() == [100.0 * r + j for j in range(3)]

    asyncio.run(main())


def test_the_share_is_in_tokens_so_long_inputs_do_not_crowd_out_short_ones() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        long, short = inputs(1, 8, length=16), inputs(2, 32, length=2)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [long, short])
        engine.gate.set()
        await asyncio.gather(blocker, *tasks)
        await sched.close()
        served = {1: 0, 2: 0}
        for batch in engine.batches[1:]:
            served[owner(batch[0])] += len(batch[0])
            if served[2] < 64:  # while both wait, neither is ever more than one long input ahead
                assert abs(served[1] - served[2]) <= 16
        assert [owner(b[0]) for b in engine.batches[1:]][:9].count(2) == 8  # 8 short runs per long one

    asyncio.run(main())


class Stepped(StubEngine):
    """One input per run, each run waiting for a permit from `steps`."""

    def __init__(self) -> None:
        super().__init__(max_batch_seqs=1, max_batch_tokens=64)
        self.steps = threading.Semaphore(0)

    def embed(self, seqs):
        self.steps.acquire()
        return super().embed(seqs)


def test_a_request_arriving_later_shares_from_then_on_neither_waiting_nor_jumping_ahead() -> None:
    """A request starts at the queue's clock: one arriving while another has been served a while takes
    turns with it from its next input on; it does not wait for it to finish, nor run alone to catch up."""

    async def main() -> None:
        engine = Stepped()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        first = asyncio.create_task(sched.embed(inputs(1, 50)))
        for _ in range(10):
            engine.steps.release()
        while len(engine.batches) < 10:
            await asyncio.sleep(0.001)
        second = asyncio.create_task(sched.embed(inputs(2, 20)))
        await asyncio.sleep(0)
        for _ in range(41):  # taking turns, its 20 inputs and about 20 of the first's
            engine.steps.release()
        assert (await second)[:, 0].tolist() == [200.0 + j for j in range(20)]
        assert not first.done()  # 40 inputs were left: it did not wait for them
        for _ in range(20):
            engine.steps.release()
        await first
        await sched.close()
        order = [owner(b[0]) for b in engine.batches]
        joined = order.index(2)
        assert order[joined : joined + 10].count(2) == 5  # turns about, not twenty in a row

    asyncio.run(main())


def test_a_one_input_request_arriving_at_any_point_waits_for_at_most_one_big_input() -> None:
    """Whenever it arrives among three big requests taking turns, the next input taken is its own or that of
    the one request whose turn is nearly done (first come first served would run all 300 first)."""

    async def waited(k: int) -> int:
        engine = Stepped()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        engine.steps.release()  # the blocker
        blocker, bigs = await queue_behind_a_running_batch(sched, engine, [inputs(r, 100, 8) for r in (1, 2, 3)])
        engine.gate.set()  # from here the permits pace the engine
        for _ in range(k):
            engine.steps.release()
        while len(engine.batches) < 1 + k:  # k big inputs have run, the next one is in the engine
            await asyncio.sleep(0.001)
        small = asyncio.create_task(sched.embed(inputs(9, 1, length=4)))
        await asyncio.sleep(0)
        for _ in range(301 - k):
            engine.steps.release()
        await asyncio.gather(blocker, small, *bigs)
        await sched.close()
        order = [owner(b[0]) for b in engine.batches]
        return order.index(9) - (1 + k + 1)  # big inputs taken after it arrived

    async def main() -> None:
        waits = [await waited(k) for k in range(6)]
        assert max(waits) <= 1 and waits.count(0) >= 3, waits

    asyncio.run(main())


def test_packed_batches_fill_the_budget_and_mix_the_requests() -> None:
    """For engines that pack many sequences per batch (llama.cpp): fair order, still full batches."""

    async def main() -> None:
        engine = StubEngine(max_batch_seqs=64, max_batch_tokens=12)
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [inputs(r, 6) for r in (1, 2, 3)])
        engine.gate.set()
        await asyncio.gather(blocker, *tasks)
        await sched.close()
        batches = engine.batches[1:]
        assert [sum(map(len, b)) for b in batches] == [12, 12, 12]
        for b in batches:
            assert sorted(owner(s) for s in b) == [1, 1, 2, 2, 3, 3]

    asyncio.run(main())


def test_an_input_that_does_not_fit_is_passed_over_for_one_that_does() -> None:
    async def main() -> None:
        engine = StubEngine(max_batch_seqs=64, max_batch_tokens=8)
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        requests = [inputs(1, 2, length=6), inputs(2, 8, length=1)]
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, requests)
        engine.gate.set()
        await asyncio.gather(blocker, *tasks)
        await sched.close()
        # request 1's input of 6 is due after five of request 2's and does not fit beside them: the other three
        # of request 2 fill the batch; request 1's run after, alone (two would not fit together)
        assert [[owner(s) for s in b] for b in engine.batches[1:]] == [[2] * 8, [1], [1]]

    asyncio.run(main())


def test_a_request_that_left_is_dropped_and_the_others_are_served() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        blocker, (gone, stays) = await queue_behind_a_running_batch(sched, engine, [inputs(1, 10), inputs(2, 10)])
        assert sched.queued == 20
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert sched.queued == 20  # counted until the packer meets them
        engine.gate.set()
        out = await stays
        await blocker
        assert sched.queued == 0
        await sched.close()
        assert out[:, 0].tolist() == [200.0 + j for j in range(10)]
        assert all(owner(b[0]) != 1 for b in engine.batches)

    asyncio.run(main())


def test_the_queue_limit_counts_the_inputs_of_every_request() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=10)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [inputs(1, 4), inputs(2, 4)])
        with pytest.raises(Overloaded):
            await sched.embed(inputs(3, 3))
        tasks.append(asyncio.create_task(sched.embed(inputs(4, 2))))  # exactly the limit: accepted
        await asyncio.sleep(0)
        assert sched.queued == 10
        engine.gate.set()
        await asyncio.gather(blocker, *tasks)
        await sched.close()
        assert sched.queued == 0 and sum(map(len, engine.batches)) == 11

    asyncio.run(main())


def test_fail_pending_fails_every_waiting_request_and_close_drains_them_all() -> None:
    async def main() -> None:
        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [inputs(r, 3) for r in (1, 2, 3)])
        sched.fail_pending(ShuttingDown())
        assert sched.queued == 0
        for t in tasks:
            with pytest.raises(ShuttingDown):
                await t
        engine.gate.set()
        assert (await blocker)[:, 0].tolist() == [0.0]
        await sched.close()

        engine = one_at_a_time()
        sched = BatchScheduler(engine, model_id="m", max_queue_inputs=1000)
        blocker, tasks = await queue_behind_a_running_batch(sched, engine, [inputs(r, 3) for r in (1, 2, 3)])
        engine.gate.set()
        await sched.close()  # returns once every queued input has run and been answered
        assert sum(map(len, engine.batches)) == 10 and sched.queued == 0 and sched.running == 0
        for r, t in zip((1, 2, 3), tasks, strict=True):
            assert (await t)[:, 0].tolist() == [100.0 * r + j for j in range(3)]

    asyncio.run(main())
