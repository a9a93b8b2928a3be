"""The dispatcher, directly: lanes, runs, order, requeue, drop, abandon, counts."""

from __future__ import annotations

import asyncio

import orjson

from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.orchestration.dispatcher import Dispatcher
from core.streaming.orchestration.run_queue import RunQueue
from core.streaming.types import TopicPartition


def _messages(partition: int, count: int, key: bytes | None = None) -> list[ConsumedMessage]:
    return [
        ConsumedMessage.of(
            topic="in",
            partition=partition,
            offset=n,
            key=key,
            value={"n": n},
            raw_value=orjson.dumps({"n": n}),
        )
        for n in range(count)
    ]


async def test_each_partition_runs_in_order_in_runs_and_counts_what_is_in_flight() -> None:
    runs: list[list[tuple[int, int]]] = []
    done: list[list[ConsumedMessage]] = []

    async def process(run: list[ConsumedMessage]) -> None:
        runs.append([(m.partition, m.offset) for m in run])
        for m in run:
            m.outcome = Outcome.HANDLED

    async def finished(run: list[ConsumedMessage]) -> None:
        done.append(run)

    dispatcher = Dispatcher(process, max_run=3, on_run_done=finished)
    dispatcher.submit_many([*_messages(0, 5), *_messages(1, 2)])
    assert dispatcher.in_flight == 7
    assert await dispatcher.wait_idle(5)
    assert dispatcher.in_flight == 0 and dispatcher.in_flight_bytes == 0
    by_partition: dict[int, list[int]] = {0: [], 1: []}
    for run in runs:
        assert len(run) <= 3 and len({p for p, _ in run}) == 1
        by_partition[run[0][0]].extend(o for _, o in run)
    assert by_partition == {0: [0, 1, 2, 3, 4], 1: [0, 1]}
    assert sum(len(r) for r in done) == 7
    await dispatcher.close()


async def test_key_lanes_keep_per_key_order_and_run_keys_in_parallel() -> None:
    running: set[bytes] = set()
    overlap = 0
    order: dict[bytes, list[int]] = {}

    async def process(run: list[ConsumedMessage]) -> None:
        nonlocal overlap
        for m in run:
            assert m.key is not None
            running.add(m.key)
            overlap = max(overlap, len(running))
            await asyncio.sleep(0.005)
            order.setdefault(m.key, []).append(m.offset)
            running.discard(m.key)
            m.outcome = Outcome.HANDLED

    dispatcher = Dispatcher(process, ordering="key", concurrency=8, max_run=1)
    messages = [m for k in range(8) for m in _messages(0, 4, key=f"k{k}".encode())]
    dispatcher.submit_many(messages)
    assert await dispatcher.wait_idle(5)
    assert all(offsets == [0, 1, 2, 3] for offsets in order.values())
    assert overlap > 1
    await dispatcher.close()


async def test_a_run_cut_short_goes_back_to_its_lane_unless_its_partition_leaves() -> None:
    leaving: set[int] = set()
    calls: list[list[int]] = []

    async def process(run: list[ConsumedMessage]) -> None:
        calls.append([m.offset for m in run])
        for m in run:
            if m.offset == 2 and len(calls) == 1:
                return  # cut short: the rest of the run stays unrun
            m.outcome = Outcome.HANDLED

    left: list[int] = []

    async def finished(run: list[ConsumedMessage]) -> None:
        left.extend(m.offset for m in run if m.outcome is None)

    dispatcher = Dispatcher(
        process, max_run=10, on_run_done=finished, keeps=lambda m: m.partition not in leaving
    )
    dispatcher.submit_many(_messages(0, 5))
    assert await dispatcher.wait_idle(5)
    assert calls == [[0, 1, 2, 3, 4], [2, 3, 4]]
    assert left == []
    leaving.add(1)
    calls.clear()

    async def cut(run: list[ConsumedMessage]) -> None:
        calls.append([m.offset for m in run])

    dispatcher.process = cut
    dispatcher.submit_many(_messages(1, 2))
    assert await dispatcher.wait_idle(5)
    assert calls == [[0, 1]] and left == [0, 1], "a leaving partition's unrun messages leave"
    await dispatcher.close()


async def test_drop_queued_and_abandon_free_a_partition() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def process(run: list[ConsumedMessage]) -> None:
        for m in run:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(m.offset)
                raise

    revoked: set[TopicPartition] = set()
    dispatcher = Dispatcher(process, max_run=1, keeps=lambda m: m.topic_partition not in revoked)
    dispatcher.submit_many(_messages(0, 3))
    await started.wait()
    tp = TopicPartition("in", 0)
    revoked.add(tp)
    assert dispatcher.busy_with({tp})
    dropped = dispatcher.drop_queued({tp})
    assert [m.offset for m in dropped] == [1, 2]
    assert not await dispatcher.wait_partitions({tp}, 0.05)
    assert dispatcher.abandon({tp}) == 1
    assert await dispatcher.wait_partitions({tp}, 5)
    assert cancelled == [0] and dispatcher.in_flight == 0
    # The lane survived the abandon and takes new work.
    revoked.clear()
    started.clear()
    dispatcher.submit_many(_messages(0, 1))
    await asyncio.wait_for(started.wait(), 5)
    assert await dispatcher.close() != []


async def test_a_crashing_lane_orphans_its_run_and_queue() -> None:
    async def process(run: list[ConsumedMessage]) -> None:
        raise RuntimeError("outside the reliability path")

    dispatcher = Dispatcher(process, max_run=1)
    dispatcher.submit_many(_messages(0, 3))
    assert await dispatcher.wait_idle(5)
    assert isinstance(dispatcher.crashed, RuntimeError)
    assert sorted(m.offset for m in dispatcher.take_orphaned()) == [0, 1, 2]
    await dispatcher.close()


def test_a_run_queue_hands_out_runs_across_and_within_chunks() -> None:
    queue = RunQueue()
    queue.extend(_messages(0, 3))
    queue.extend(_messages(1, 4))
    assert len(queue) == 7
    first = queue.take(5)
    assert [(m.partition, m.offset) for m in first] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    queue.extendleft(first[3:])  # a cut-short run goes back in front
    assert [(m.partition, m.offset) for m in queue.take(2)] == [(1, 0), (1, 1)]
    assert [m.offset for m in queue.take(10)] == [2, 3]
    assert len(queue) == 0 and queue.take(10) == []
    queue.extend(_messages(2, 2))
    assert [m.offset for m in queue.clear()] == [0, 1] and not queue
