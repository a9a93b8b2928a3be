"""The key queue: per-key order, one lane per key at a time, and no key left waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.orchestration.dispatcher import Dispatcher
from core.streaming.orchestration.key_queue import KeyQueue
from core.streaming.types import TopicPartition


def _message(key: str, offset: int, partition: int = 0) -> ConsumedMessage:
    return ConsumedMessage.of(
        topic="in",
        partition=partition,
        offset=offset,
        key=key.encode(),
        value={"n": offset},
        raw_value=orjson.dumps({"n": offset}),
    )


def _keyed(messages: list[ConsumedMessage]) -> list[tuple[bytes | None, int]]:
    return [(m.key, m.offset) for m in messages]


def test_a_running_key_is_not_taken_again_until_released() -> None:
    queue = KeyQueue()
    assert queue.push([_message("a", 0), _message("b", 1), _message("a", 2)]) == 2
    run, keys = queue.take(limit=10)
    assert _keyed(run) == [(b"a", 0), (b"a", 2), (b"b", 1)]
    assert len(keys) == 2 and queue.size == 0
    assert queue.push([_message("a", 3), _message("c", 4)]) == 1  # only c is ready
    run2, keys2 = queue.take(limit=10)
    assert _keyed(run2) == [(b"c", 4)] and len(keys2) == 1
    assert queue.release(keys, []) == 1  # a has a message waiting: ready again
    run3, _ = queue.take(limit=10)
    assert _keyed(run3) == [(b"a", 3)]


def test_take_stops_at_the_limit_and_unrun_messages_go_back_in_front() -> None:
    queue = KeyQueue()
    queue.push([_message("a", n) for n in range(5)])
    run, keys = queue.take(limit=2)
    assert _keyed(run) == [(b"a", 0), (b"a", 1)] and queue.size == 3
    assert queue.take(limit=2) == ([], [])  # the key runs: its rest waits
    assert queue.release(keys, [run[1]]) == 1
    run2, _ = queue.take(limit=10)
    assert [m.offset for m in run2] == [1, 2, 3, 4]


def test_drop_removes_waiting_messages_of_leaving_partitions() -> None:
    queue = KeyQueue()
    queue.push([_message("a", 0, partition=0), _message("a", 0, partition=1)])
    dropped = queue.drop(lambda m: m.partition == 1)
    assert [m.partition for m in dropped] == [1] and queue.size == 1
    assert [m.partition for m in queue.messages()] == [0]
    assert [m.partition for m in queue.clear()] == [0] and not queue.ready


async def test_a_free_lane_takes_waiting_keys_while_another_lane_is_blocked() -> None:
    release_a = asyncio.Event()
    handled: list[tuple[bytes | None, int]] = []

    async def process(run: list[ConsumedMessage]) -> None:
        for m in run:
            if m.key == b"a" and m.offset == 0:
                await release_a.wait()
            handled.append((m.key, m.offset))
            m.outcome = Outcome.HANDLED

    dispatcher = Dispatcher(process, ordering="key", concurrency=2, max_run=1)
    dispatcher.submit_many([_message("a", 0), _message("b", 1), _message("a", 2)])
    dispatcher.submit_many([_message("c", 3), _message("d", 4)])
    for _ in range(50):
        await asyncio.sleep(0)
    # One lane waits on a's first message; the other ran every other key meanwhile.
    assert sorted(handled) == [(b"b", 1), (b"c", 3), (b"d", 4)]
    release_a.set()
    assert await dispatcher.wait_idle(5)
    assert [o for k, o in handled if k == b"a"] == [0, 2]
    assert dispatcher.in_flight == 0
    await dispatcher.close()


async def test_key_lanes_requeue_a_cut_short_run_in_front_of_its_key() -> None:
    attempts: list[int] = []
    handled: list[int] = []

    async def process(run: list[ConsumedMessage]) -> None:
        for m in run:
            attempts.append(m.offset)
            if m.offset == 1 and attempts.count(1) == 1:
                return  # cut short: offset 1 (and what follows in the run) stays unrun
            handled.append(m.offset)
            m.outcome = Outcome.HANDLED

    dispatcher = Dispatcher(process, ordering="key", concurrency=2, max_run=10)
    dispatcher.submit_many([_message("a", n) for n in range(4)])
    assert await dispatcher.wait_idle(5)
    assert attempts.count(1) == 2 and handled == [0, 1, 2, 3]
    await dispatcher.close()


async def test_key_runs_are_sized_by_handler_time() -> None:
    sizes: list[int] = []

    async def process(run: list[ConsumedMessage]) -> None:
        sizes.append(len(run))
        for m in run:
            m.outcome = Outcome.HANDLED

    dispatcher = Dispatcher(process, ordering="key", concurrency=2, max_run=100)
    dispatcher.submit_many([_message(f"k{n % 50}", n) for n in range(400)])
    assert await dispatcher.wait_idle(5)
    # The first run is one message; a fast handler then gets runs of many keys.
    assert sizes[0] == 1 and max(sizes) > 50
    assert dispatcher.seconds_per_message is not None
    assert dispatcher.seconds_per_message < 0.001

    slow_sizes: list[int] = []
    slow = Dispatcher(_sleepy(slow_sizes), ordering="key", concurrency=2, max_run=100)
    slow.submit_many([_message(f"k{n % 4}", n) for n in range(12)])
    assert await slow.wait_idle(5)
    # A handler slower than a run's target time gets one message per run.
    assert slow_sizes == [1] * 12
    await dispatcher.close()
    await slow.close()


def _sleepy(sizes: list[int]) -> Callable[[list[ConsumedMessage]], Awaitable[None]]:
    async def process(run: list[ConsumedMessage]) -> None:
        sizes.append(len(run))
        for m in run:
            await asyncio.sleep(0.002)
            m.outcome = Outcome.HANDLED

    return process


async def test_key_lanes_drop_and_abandon_a_leaving_partition() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []
    handled: list[tuple[int, int]] = []

    async def process(run: list[ConsumedMessage]) -> None:
        for m in run:
            if m.partition == 0:
                started.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.append(m.offset)
                    raise
            handled.append((m.partition, m.offset))
            m.outcome = Outcome.HANDLED

    revoked: set[TopicPartition] = set()
    dispatcher = Dispatcher(
        process,
        ordering="key",
        concurrency=2,
        max_run=1,
        keeps=lambda m: m.topic_partition not in revoked,
    )
    dispatcher.submit_many([_message("a", n, partition=0) for n in range(3)])
    await asyncio.wait_for(started.wait(), 5)
    tp = TopicPartition("in", 0)
    revoked.add(tp)
    assert dispatcher.busy_with({tp})
    dropped = dispatcher.drop_queued({tp})
    assert [m.offset for m in dropped] == [1, 2]  # waiting behind the running key
    assert dispatcher.abandon({tp}) == 1
    assert await dispatcher.wait_partitions({tp}, 5)
    assert cancelled == [0] and dispatcher.in_flight == 0
    # The key was released with its lane: new work of other partitions still runs.
    dispatcher.submit_many([_message("a", 5, partition=1), _message("b", 6, partition=1)])
    assert await dispatcher.wait_idle(5)
    assert sorted(handled) == [(1, 5), (1, 6)]
    await dispatcher.close()


async def test_a_crashing_key_lane_orphans_its_run_and_its_keys_waiting_messages() -> None:
    async def process(run: list[ConsumedMessage]) -> None:
        if any(m.key == b"bad" for m in run):
            raise RuntimeError("outside the reliability path")
        await asyncio.sleep(0.01)
        for m in run:
            m.outcome = Outcome.HANDLED

    dispatcher = Dispatcher(process, ordering="key", concurrency=2, max_run=1)
    dispatcher.submit_many([_message("bad", 0), _message("bad", 1), _message("ok", 2)])
    assert await dispatcher.wait_idle(5)
    assert isinstance(dispatcher.crashed, RuntimeError)
    assert sorted(m.offset for m in dispatcher.take_orphaned()) == [0, 1]
    assert await dispatcher.close() == []
