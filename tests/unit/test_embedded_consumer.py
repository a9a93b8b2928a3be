"""Consumers of the embedded broker: fetching, positions, offsets, lifecycle."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.streaming.broker_api import ConsumerOptions
from core.streaming.embedded import (
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)
from core.streaming.errors import ClientClosedError, CommitError
from core.streaming.types import Record, TopicPartition

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


async def _ready(consumer: InMemoryConsumer, expected: set[TopicPartition]) -> None:
    """Wait until the consumer owns ``expected`` (its group work runs in the background)."""
    for _ in range(200):
        if consumer.assignment() == expected and consumer._can_fetch():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"assignment {consumer.assignment()} never became {expected}")


async def _started(
    broker: InMemoryBroker, topics: list[str] | None = None, group: str = "g", **kwargs: object
) -> InMemoryConsumer:
    options = ConsumerOptions(**kwargs)  # type: ignore[arg-type]
    consumer = InMemoryConsumer(broker, topics or ["t"], group, options)
    await consumer.start()
    return consumer


def _fill(broker: InMemoryBroker, partition: int, count: int, topic: str = "t") -> None:
    for i in range(count):
        broker.append(topic, f"{partition}-{i}".encode(), partition=partition)


async def _drain(consumer: InMemoryConsumer, count: int) -> list[Record]:
    out: list[Record] = []
    while len(out) < count:
        batch = await consumer.getmany(timeout_ms=1000)
        assert batch, f"only {len(out)} of {count} records arrived"
        for records in batch.values():
            out.extend(records)
    return out


async def test_getmany_waits_for_data_and_wakes_on_send() -> None:
    broker = InMemoryBroker(default_partitions=1)
    consumer = await _started(broker)
    await _ready(consumer, {TP0})

    async def later() -> None:
        await asyncio.sleep(0.05)
        broker.append("t", b"late")

    task = asyncio.create_task(later())
    started = time.monotonic()
    batch = await consumer.getmany(timeout_ms=5000)
    elapsed = time.monotonic() - started
    await task
    assert [r.value for r in batch[TP0]] == [b"late"]
    assert 0.04 < elapsed < 1.0


async def test_getmany_times_out_without_spinning() -> None:
    broker = InMemoryBroker(default_partitions=1)
    consumer = await _started(broker)
    await _ready(consumer, {TP0})
    calls = 0
    fetch = consumer._fetch

    def counting(limit: int) -> dict[TopicPartition, list[Record]]:
        nonlocal calls
        calls += 1
        return fetch(limit)

    consumer._fetch = counting  # type: ignore[method-assign]
    started = time.monotonic()
    assert await consumer.getmany(timeout_ms=200) == {}
    assert 0.19 < time.monotonic() - started < 1.0
    assert calls <= 2
    assert await consumer.getmany() == {}


async def test_max_records_and_fair_rotation() -> None:
    broker = InMemoryBroker(default_partitions=2)
    _fill(broker, 0, 700)
    _fill(broker, 1, 700)
    consumer = await _started(broker, max_poll_records=300)
    await _ready(consumer, {TP0, TP1})
    first = await consumer.getmany()
    assert sum(len(r) for r in first.values()) == 300
    second = await consumer.getmany(max_records=50)
    assert sum(len(r) for r in second.values()) == 50
    assert set(first) != set(second) or len(first) == 2
    with pytest.raises(ValueError):
        await consumer.getmany(max_records=0)
    rest = await _drain(consumer, 1400 - 350)
    by_partition: dict[int, list[int]] = {0: [], 1: []}
    for batch in (first, second):
        for tp, records in batch.items():
            by_partition[tp.partition].extend(r.offset for r in records)
    for record in rest:
        by_partition[record.partition].append(record.offset)
    assert by_partition == {0: list(range(700)), 1: list(range(700))}


async def test_large_fetches_are_cheap() -> None:
    broker = InMemoryBroker(default_partitions=3)
    producer = InMemoryProducer(broker)
    await producer.start()
    for i in range(30_000):
        await producer.send("t", b"x" * 64, key=str(i).encode())
    consumer = await _started(broker)
    await _ready(consumer, {TopicPartition("t", p) for p in range(3)})
    started = time.perf_counter()
    got = len(await _drain(consumer, 30_000))
    assert got == 30_000
    assert time.perf_counter() - started < 1.0


async def test_pause_resume_and_unassigned_partitions() -> None:
    broker = InMemoryBroker(default_partitions=2)
    consumer = await _started(broker)
    await _ready(consumer, {TP0, TP1})
    consumer.pause(TP0)
    _fill(broker, 0, 2)
    _fill(broker, 1, 2)
    assert set(await consumer.getmany(timeout_ms=50)) == {TP1}
    assert await consumer.getmany(timeout_ms=50) == {}
    consumer.resume(TP0)
    assert set(await consumer.getmany(timeout_ms=50)) == {TP0}
    stranger = TopicPartition("other", 0)
    for call in (consumer.pause, consumer.resume, consumer.highwater):
        with pytest.raises(PartitionNotAssignedError):
            call(stranger)
    with pytest.raises(PartitionNotAssignedError):
        consumer.seek(stranger, 0)
    with pytest.raises(PartitionNotAssignedError):
        await consumer.position(stranger)


async def test_paused_partitions_are_resumed_by_a_rebalance() -> None:
    broker = InMemoryBroker(default_partitions=2)
    consumer = await _started(broker)
    await _ready(consumer, {TP0, TP1})
    consumer.pause(TP0)
    broker.create_topic("t2", 1)
    other = await _started(broker, ["t2"])
    await _ready(consumer, {TP0, TP1})
    assert consumer.paused() == set()
    await other.stop()


async def test_seek_position_highwater_and_end_offsets() -> None:
    broker = InMemoryBroker(default_partitions=1)
    _fill(broker, 0, 10)
    consumer = await _started(broker)
    await _ready(consumer, {TP0})
    assert await consumer.position(TP0) == 0
    assert consumer.highwater(TP0) == 10
    consumer.seek(TP0, 7)
    assert [r.offset for r in (await consumer.getmany())[TP0]] == [7, 8, 9]
    assert await consumer.position(TP0) == 10
    with pytest.raises(ValueError):
        consumer.seek(TP0, -1)
    consumer.seek(TP0, 50)
    assert [r.offset for r in (await consumer.getmany())[TP0]] == list(range(10))
    assert await consumer.end_offsets([TP0]) == {TP0: 10}
    with pytest.raises(UnknownTopicOrPartitionError):
        await consumer.end_offsets([TP0, TopicPartition("missing", 0)])


async def test_latest_starts_at_the_end() -> None:
    broker = InMemoryBroker(default_partitions=1)
    _fill(broker, 0, 5)
    consumer = await _started(broker, auto_offset_reset="latest")
    await _ready(consumer, {TP0})
    assert await consumer.getmany(timeout_ms=20) == {}
    broker.append("t", b"new")
    assert [r.value for r in (await consumer.getmany(timeout_ms=100))[TP0]] == [b"new"]


@pytest.mark.parametrize(("policy", "expected"), [("earliest", [5, 6, 7]), ("latest", [])])
async def test_position_below_log_start_is_reset(policy: str, expected: list[int]) -> None:
    broker = InMemoryBroker(default_partitions=1, retention_records=3)
    _fill(broker, 0, 3)
    first = await _started(broker)
    await _ready(first, {TP0})
    await first.getmany()
    await first.commit({TP0: 1})
    await first.stop()
    _fill(broker, 0, 5)
    assert (broker.start_offset(TP0), broker.end_offset(TP0)) == (5, 8)
    consumer = await _started(broker, auto_offset_reset=policy)
    await _ready(consumer, {TP0})
    assert await consumer.position(TP0) == 1
    batch = await consumer.getmany(timeout_ms=20)
    assert [r.offset for records in batch.values() for r in records] == expected
    assert await consumer.position(TP0) == 8


async def test_reset_policy_none_raises() -> None:
    broker = InMemoryBroker(default_partitions=1)
    _fill(broker, 0, 2)
    consumer = await _started(broker, auto_offset_reset="none")
    await _ready(consumer, {TP0})
    with pytest.raises(OffsetOutOfRangeError, match="no committed offset"):
        await consumer.getmany()
    consumer.seek(TP0, 1)
    assert [r.offset for r in (await consumer.getmany())[TP0]] == [1]
    consumer.seek(TP0, 9)
    with pytest.raises(OffsetOutOfRangeError, match="outside the log"):
        await consumer.getmany()


async def test_commit_validation_is_all_or_nothing() -> None:
    broker = InMemoryBroker(default_partitions=2)
    _fill(broker, 0, 5)
    consumer = await _started(broker)
    await _ready(consumer, {TP0, TP1})
    for bad in ({TP0: 6}, {TP0: -1}, {TP0: 2, TP1: 1}, {TopicPartition("x", 0): 0}):
        with pytest.raises(CommitError):
            await consumer.commit(bad)
    assert await consumer.committed(TP0) is None
    with pytest.raises(TypeError):
        await consumer.commit({TP0: "1"})  # type: ignore[dict-item]
    await consumer.commit({})
    await consumer.commit({TP0: 5, TP1: 0})
    assert (await consumer.committed(TP0), await consumer.committed(TP1)) == (5, 0)


async def test_lifecycle_errors() -> None:
    broker = InMemoryBroker()
    consumer = InMemoryConsumer(broker, ["t"], "g")
    assert consumer.assignment() == set() and consumer.paused() == set()
    with pytest.raises(ClientClosedError, match="not started"):
        await consumer.getmany()
    await consumer.start()
    await consumer.start()
    await consumer.stop()
    await consumer.stop()
    await consumer.crash()
    with pytest.raises(ClientClosedError, match="stopped"):
        await consumer.committed(TP0)
    with pytest.raises(ClientClosedError):
        await consumer.start()
    never = InMemoryConsumer(broker, ["t"], "g")
    await never.stop()
    with pytest.raises(ClientClosedError):
        await never.start()


def test_constructor_validates() -> None:
    broker = InMemoryBroker()
    with pytest.raises(ValueError):
        InMemoryConsumer(broker, ["t"], "g", ConsumerOptions(auto_offset_reset="smallest"))
    with pytest.raises(ValueError):
        InMemoryConsumer(broker, ["t"], "g", ConsumerOptions(max_poll_records=0))
    with pytest.raises(ValueError, match="third"):
        InMemoryConsumer(
            broker, ["t"], "g", ConsumerOptions(session_timeout_ms=1000, heartbeat_interval_ms=400)
        )
    with pytest.raises(ValueError):
        InMemoryConsumer(broker, ["t"], "")
    with pytest.raises(TypeError):
        InMemoryConsumer(broker, "t", "g")


async def test_stop_wakes_a_waiting_getmany() -> None:
    broker = InMemoryBroker(default_partitions=1)
    consumer = await _started(broker)
    await _ready(consumer, {TP0})
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=10_000))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await consumer.stop()
    assert await waiting == {}
    assert time.monotonic() - started < 0.5


async def test_subscribing_creates_topics_when_auto_creation_is_on() -> None:
    broker = InMemoryBroker(default_partitions=2)
    consumer = await _started(broker, ["fresh"])
    await _ready(consumer, {TopicPartition("fresh", 0), TopicPartition("fresh", 1)})
    assert broker.topics() == {"fresh": 2}
    await consumer.stop()


async def test_groups_are_independent() -> None:
    broker = InMemoryBroker(default_partitions=1)
    _fill(broker, 0, 3)
    a = await _started(broker, group="ga")
    b = await _started(broker, group="gb")
    assert len(await _drain(a, 3)) == 3
    assert len(await _drain(b, 3)) == 3
    await a.commit({TP0: 3})
    assert await b.committed(TP0) is None
