"""Scenarios every broker backend must pass identically: embedded and real Kafka."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest
from aiokafka.partitioner import murmur2 as kafka_murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from core.streaming.errors import (
    ClientClosedError,
    CommitError,
    MessageTooLargeError,
    PartitionNotAssignedError,
)
from core.streaming.topic_names import InvalidTopicNameError
from core.streaming.types import TopicPartition, TopicSpec

if TYPE_CHECKING:
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)


async def test_round_trip_keeps_key_value_headers_and_metadata(backend: Backend) -> None:
    topic = await backend.topic()
    producer = await backend.started_producer()
    headers = [("trace-id", b"abc-123"), ("attempt", b"1"), ("empty", b"")]
    meta = await (await producer.send(topic, b"value-1", key=b"key-1", headers=headers))
    tombstone = await (await producer.send(topic, None, key=b"key-1"))
    consumer = await backend.started_consumer([topic], backend.name_for("group"))

    first, second = await backend.drain(consumer, 2)

    assert (first.topic, first.partition, first.offset) == (meta.topic, meta.partition, meta.offset)
    assert (first.key, first.value) == (b"key-1", b"value-1")
    assert [tuple(h) for h in first.headers] == headers
    assert abs(first.timestamp - time.time() * 1000) < 60_000
    assert (second.offset, second.key, second.value) == (tombstone.offset, b"key-1", None)
    assert list(second.headers) == []


async def test_records_of_one_key_keep_their_order_on_one_partition(backend: Backend) -> None:
    topic = await backend.topic()
    producer = await backend.started_producer()
    keys = [f"instrument-{i}".encode() for i in range(5)]
    for seq in range(20):
        for key in keys:
            await producer.send(topic, str(seq).encode(), key=key)
    await producer.flush()
    consumer = await backend.started_consumer([topic], backend.name_for("group"))

    records = await backend.drain(consumer, 100)

    by_key = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)
    for key in keys:
        got = by_key[key]
        assert [int(r.value or b"") for r in got] == list(range(20)), key
        assert len({r.partition for r in got}) == 1, key
        offsets = [r.offset for r in got]
        assert offsets == sorted(offsets), key


async def test_partition_of_a_key_is_kafkas_murmur2_choice(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    producer = await backend.started_producer()
    keys = [b"", b"a", b"ab", b"abc", b"abcd", "ünïcode-✓".encode()] + [
        f"order-{i}".encode() for i in range(60)
    ]

    placed = {key: (await (await producer.send(topic, b"x", key=key))).partition for key in keys}

    expected = {key: (kafka_murmur2(key) & 0x7FFFFFFF) % 3 for key in keys}
    assert placed == expected


async def test_new_member_resumes_at_the_committed_offset(backend: Backend) -> None:
    topic = await backend.topic()
    group = backend.name_for("group")
    tp = TopicPartition(topic, 0)
    producer = await backend.started_producer()
    for i in range(10):
        await producer.send(topic, f"m{i}".encode(), partition=0)
    await producer.flush()

    first = await backend.started_consumer([topic], group)
    assert [r.offset for r in await backend.drain(first, 10)] == list(range(10))
    await first.commit({tp: 6})
    assert await first.committed(tp) == 6
    await first.stop()

    second = await backend.started_consumer([topic], group)
    resumed = await backend.drain(second, 4)
    assert [(r.offset, r.value) for r in resumed] == [(i, f"m{i}".encode()) for i in range(6, 10)]
    assert await second.getmany(timeout_ms=300) == {}


async def test_member_lost_without_commit_has_its_records_redelivered(backend: Backend) -> None:
    topic = await backend.topic()
    group = backend.name_for("group")
    tp = TopicPartition(topic, 0)
    producer = await backend.started_producer()
    for i in range(8):
        await producer.send(topic, f"m{i}".encode(), partition=0)
    await producer.flush()

    doomed = await backend.doomed_member([topic], group, read=8, commit={tp: 3})
    assert doomed.offsets == list(range(8))
    await doomed.kill()
    killed_at = time.monotonic()

    heir = backend.consumer([topic], group, options=backend.loss_options)
    await heir.start()
    redelivered = await backend.drain(heir, 5)
    assert [r.offset for r in redelivered] == [3, 4, 5, 6, 7]
    # The dead member never left: the group waited for its session to run out.
    session_s = (backend.loss_options.session_timeout_ms or 0) / 1000
    assert time.monotonic() - killed_at >= session_s / 2
    assert heir.generation > doomed.generation
    assert heir.member_id != doomed.member_id


async def test_members_split_partitions_and_one_takes_over_on_leave(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    group = backend.name_for("group")
    everything = {TopicPartition(topic, p) for p in range(3)}
    listener_a, listener_b = backend.listener(), backend.listener()

    a = await backend.started_consumer([topic], group, listener=listener_a)
    await backend.poll_until([a], lambda _: a.assignment() == everything, what="a owns all")
    b = await backend.started_consumer([topic], group, listener=listener_b)

    def split(_: object) -> bool:
        mine, theirs = a.assignment(), b.assignment()
        return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == everything

    await backend.poll_until([a, b], split, what="a and b to split the partitions")
    owned_by_a, owned_by_b = a.assignment(), b.assignment()
    assert sorted(len(x) for x in (owned_by_a, owned_by_b)) == [1, 2]
    # Eager rebalance: a gave up everything, then got its share back.
    assert listener_a.events[-2:] == [
        ("revoked", frozenset(everything)),
        ("assigned", frozenset(owned_by_a)),
    ]
    assert listener_b.events[-1] == ("assigned", frozenset(owned_by_b))

    producer = await backend.started_producer()
    for p in range(3):
        await producer.send(topic, f"p{p}".encode(), partition=p)
    await producer.flush()
    got = await backend.poll_until(
        [a, b], lambda got: len(got[0]) + len(got[1]) >= 3, what="one record per partition"
    )
    assert {TopicPartition(r.topic, r.partition) for r in got[0]} == owned_by_a
    assert {TopicPartition(r.topic, r.partition) for r in got[1]} == owned_by_b

    callbacks_before_stop = list(listener_b.events)
    await b.stop()
    # aiokafka runs no revocation callback on stop; the embedded broker neither.
    assert listener_b.events == callbacks_before_stop
    # Nothing was committed, so after the eager rebalance a reads every partition,
    # its own included, from the start again.
    again = await backend.poll_until(
        [a],
        lambda got: (
            a.assignment() == everything
            and {TopicPartition(r.topic, r.partition) for r in got[0]} == everything
        ),
        what="a to take over every partition and reread it",
    )
    assert sorted(r.value or b"" for r in again[0]) == [b"p0", b"p1", b"p2"]
    assert listener_a.events[-2:] == [
        ("revoked", frozenset(owned_by_a)),
        ("assigned", frozenset(everything)),
    ]


async def test_pause_stops_delivery_and_resume_continues_it(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    everything = {TopicPartition(topic, p) for p in range(3)}
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await backend.poll_until(
        [consumer], lambda _: consumer.assignment() == everything, what="assign"
    )

    consumer.pause(tp0)
    assert consumer.paused() == {tp0}
    producer = await backend.started_producer()
    for i in range(3):
        await producer.send(topic, f"p0-{i}".encode(), partition=0)
        await producer.send(topic, f"p1-{i}".encode(), partition=1)
    await producer.flush()

    while_paused = await backend.drain(consumer, 3)
    assert {r.partition for r in while_paused} == {1}
    assert await consumer.getmany(timeout_ms=500) == {}

    consumer.resume(tp0)
    assert consumer.paused() == set()
    after = await backend.drain(consumer, 3)
    assert [(r.partition, r.value) for r in after] == [(0, f"p0-{i}".encode()) for i in range(3)]
    assert await consumer.position(tp0) == 3
    assert await consumer.position(tp1) == 3


async def test_lag_is_end_offset_minus_committed(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    group = backend.name_for("group")
    tps = [TopicPartition(topic, p) for p in range(3)]
    producer = await backend.started_producer()
    for i in range(10):
        await producer.send(topic, b"a%d" % i, partition=0)
    for i in range(4):
        await producer.send(topic, b"b%d" % i, partition=1)
    await producer.flush()
    consumer = await backend.started_consumer([topic], group)
    await backend.drain(consumer, 14)

    await consumer.commit({tps[0]: 6, tps[1]: 4})

    ends = await consumer.end_offsets(tps)
    assert ends == {tps[0]: 10, tps[1]: 4, tps[2]: 0}
    lag = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        if committed is not None:
            lag[tp] = ends[tp] - committed
    assert lag == {tps[0]: 4, tps[1]: 0}
    assert await consumer.committed(tps[2]) is None
    if not backend.is_kafka:
        assert backend.broker.lag(group) == {tps[0]: 4, tps[1]: 0, tps[2]: 0}


async def test_illegal_topic_name_is_refused(backend: Backend) -> None:
    producer = await backend.started_producer()
    for bad in ("has space", "slash/topic", "", "x" * 250, ".."):
        with pytest.raises(InvalidTopicNameError):
            await producer.send(bad, b"x")
    with pytest.raises(InvalidTopicNameError):
        backend.consumer(["bad topic"], backend.name_for("group"))


async def test_record_above_max_request_size_is_refused_and_not_stored(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    limit = 2048
    producer = await backend.started_producer(max_request_size=limit)
    overhead = DefaultRecordBatchBuilder.estimate_size_in_bytes(None, b"", [])
    fits = b"v" * (limit - overhead - 1)
    while DefaultRecordBatchBuilder.estimate_size_in_bytes(None, fits, []) < limit:
        fits += b"v"
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(None, fits, []) == limit

    with pytest.raises(MessageTooLargeError):
        await producer.send(topic, fits + b"v")
    meta = await (await producer.send(topic, fits))
    assert meta.offset == 0

    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    assert [r.value for r in await backend.drain(consumer, 1)] == [fits]


async def test_commit_of_a_partition_not_owned_is_refused(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    other = await backend.topic(partitions=1)
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await backend.poll_until(
        [consumer], lambda _: consumer.assignment() == {TopicPartition(topic, 0)}, what="assign"
    )
    with pytest.raises(CommitError):
        await consumer.commit({TopicPartition(other, 0): 0})


async def test_commit_beyond_high_watermark_is_refused(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    tp = TopicPartition(topic, 0)
    producer = await backend.started_producer()
    await producer.send(topic, b"x")
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await backend.drain(consumer, 1)

    with pytest.raises(CommitError):
        await consumer.commit({tp: 2})
    with pytest.raises(CommitError):
        await consumer.commit({tp: -1})
    await consumer.commit({tp: 1})
    assert await consumer.committed(tp) == 1


async def test_per_partition_calls_on_a_partition_not_owned_are_refused(
    backend: Backend,
) -> None:
    topic = await backend.topic(partitions=1)
    other = TopicPartition(await backend.topic(partitions=1), 0)
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await backend.poll_until(
        [consumer], lambda _: consumer.assignment() == {TopicPartition(topic, 0)}, what="assign"
    )
    for call in (
        lambda: consumer.pause(other),
        lambda: consumer.resume(other),
        lambda: consumer.seek(other, 0),
        lambda: consumer.highwater(other),
    ):
        with pytest.raises(PartitionNotAssignedError):
            call()


async def test_clients_refuse_use_after_stop(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    tp = TopicPartition(topic, 0)
    unstarted = backend.consumer([topic], backend.name_for("group"))
    with pytest.raises(ClientClosedError):
        await unstarted.getmany()

    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await backend.poll_until([consumer], lambda _: consumer.assignment() == {tp}, what="assign")
    await consumer.stop()
    await consumer.stop()

    assert consumer.assignment() == set()
    assert consumer.paused() == set()
    with pytest.raises(ClientClosedError):
        await consumer.getmany(timeout_ms=10)
    with pytest.raises(ClientClosedError):
        await consumer.commit({tp: 0})
    with pytest.raises(ClientClosedError):
        await consumer.committed(tp)
    with pytest.raises(ClientClosedError):
        await consumer.position(tp)
    with pytest.raises(ClientClosedError):
        await consumer.end_offsets([tp])
    with pytest.raises(ClientClosedError):
        consumer.pause(tp)
    with pytest.raises(ClientClosedError):
        consumer.resume(tp)
    with pytest.raises(ClientClosedError):
        consumer.seek(tp, 0)
    with pytest.raises(ClientClosedError):
        consumer.highwater(tp)

    producer = await backend.started_producer()
    await producer.stop()
    await producer.stop()
    with pytest.raises(ClientClosedError):
        await producer.send(topic, b"x")


async def test_admin_creates_idempotently_lists_and_deletes(backend: Backend) -> None:
    admin = await backend.admin()
    name = backend.name_for("admin")
    assert await admin.create_topics([TopicSpec(name, partitions=2)]) == [name]
    assert await admin.create_topics([TopicSpec(name, partitions=2)]) == []
    assert name in await admin.list_topics()
    producer = await backend.started_producer()
    assert await producer.partitions_for(name) == {0, 1}

    await admin.delete_topics([name])
    deadline = time.monotonic() + backend.timeout_s
    while name in await admin.list_topics():
        assert time.monotonic() < deadline, "topic still listed after delete"
        await asyncio.sleep(0.1)
