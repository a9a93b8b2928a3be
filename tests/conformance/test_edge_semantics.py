"""Edge cases where Kafka's answer is easy to get wrong: both backends must give it.

Records at the limits (null header values, large keys, no key and no value, sizes
around ``max.message.bytes``), topics Kafka refuses, offsets without a position,
partitions that do not exist, and a subscribed topic that is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from core.streaming.errors import (
    EmptyRecordError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    TopicCreationError,
    UnknownTopicOrPartitionError,
)
from core.streaming.types import TopicPartition, TopicSpec
from core.topic_names import InvalidTopicNameError

if TYPE_CHECKING:
    from core.streaming.broker_api import ConsumerClient
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)


def value_for_batch_size(size: int) -> bytes:
    """A value whose unkeyed, headerless one-record batch is exactly ``size`` bytes."""
    length = size - 70
    while True:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, size * 2)
        builder.append(0, int(time.time() * 1000), None, b"v" * length, [])
        actual = len(builder.build())
        if actual == size:
            return b"v" * length
        length += size - actual


async def wait_for_assignment(backend: Backend, consumer: ConsumerClient) -> set[TopicPartition]:
    deadline = time.monotonic() + backend.timeout_s
    while not consumer.assignment():
        assert time.monotonic() < deadline, "no assignment"
        await asyncio.sleep(0.05)
    return consumer.assignment()


async def test_null_header_values_and_100_kb_keys_round_trip(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    producer = await backend.started_producer()
    big_key = bytes(range(256)) * 400  # 100 KB, not UTF-8
    headers = [("n", None), ("empty", b""), ("v", b"x")]
    await (await producer.send(topic, b"value", key=big_key, headers=headers))
    await (await producer.send(topic, None, key=b"tombstone", headers=[("n", None)]))
    consumer = await backend.started_consumer([topic], backend.name_for("group"))

    first, second = await backend.drain(consumer, 2)

    assert (first.key, first.value) == (big_key, b"value")
    assert [tuple(h) for h in first.headers] == headers
    assert (second.key, second.value) == (b"tombstone", None)
    assert [tuple(h) for h in second.headers] == [("n", None)]


async def test_a_record_without_key_and_value_is_refused_at_send(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    producer = await backend.started_producer()
    with pytest.raises(EmptyRecordError):
        await producer.send(topic, None, key=None)
    with pytest.raises(EmptyRecordError):
        await producer.send(topic, None, key=None, headers=[("h", b"1")])
    await (await producer.send(topic, b"", key=None))
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    assert [r.value for r in await backend.drain(consumer, 1)] == [b""]
    assert await consumer.end_offsets([TopicPartition(topic, 0)]) == {TopicPartition(topic, 0): 1}


async def test_topic_max_message_bytes_refuses_on_the_ack_and_stores_nothing(
    backend: Backend,
) -> None:
    topic = await backend.topic(partitions=1, configs={"max.message.bytes": "20000"})
    producer = await backend.started_producer(max_request_size=100_000)
    fits, too_big = value_for_batch_size(20_000), value_for_batch_size(20_001)

    ack = await producer.send(topic, too_big)
    with pytest.raises(MessageTooLargeError):
        await ack
    assert (await (await producer.send(topic, fits))).offset == 0

    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    assert [r.value for r in await backend.drain(consumer, 1)] == [fits]
    assert await consumer.end_offsets([TopicPartition(topic, 0)]) == {TopicPartition(topic, 0): 1}


async def test_the_broker_default_limit_is_kafkas_1048588_bytes(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    producer = await backend.started_producer(max_request_size=2_000_000)
    ack = await producer.send(topic, value_for_batch_size(1_048_589))
    with pytest.raises(MessageTooLargeError):
        await ack
    assert (await (await producer.send(topic, value_for_batch_size(1_048_588)))).offset == 0


async def test_auto_offset_reset_none_without_a_commit_raises_our_error(
    backend: Backend,
) -> None:
    topic = await backend.topic(partitions=1)
    tp = TopicPartition(topic, 0)
    producer = await backend.started_producer()
    await (await producer.send(topic, b"r0"))
    consumer = backend.consumer([topic], backend.name_for("group"), auto_offset_reset="none")
    await consumer.start()
    assert await wait_for_assignment(backend, consumer) == {tp}

    with pytest.raises(OffsetOutOfRangeError):
        await asyncio.wait_for(consumer.position(tp), 10)
    deadline = time.monotonic() + backend.timeout_s
    with pytest.raises(OffsetOutOfRangeError):
        while time.monotonic() < deadline:
            assert await consumer.getmany(timeout_ms=200) == {}

    # A commit gives the partition a position; Kafka's fetcher may still hand out
    # one error it had queued before it looks the committed offset up again.
    await consumer.commit({tp: 0})
    values: list[bytes | None] = []
    while not values:
        assert time.monotonic() < deadline + backend.timeout_s, "the commit was never used"
        with contextlib.suppress(OffsetOutOfRangeError):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(r.value for r in batch)
    assert values == [b"r0"]
    assert await consumer.position(tp) == 1


async def test_colliding_topic_names_are_refused(backend: Backend) -> None:
    admin = await backend.admin()
    dotted = backend.name_for("a.b")
    underscored = dotted.replace(".", "_")
    assert await admin.create_topics([TopicSpec(dotted)]) == [dotted]
    backend.track_topic(dotted)
    with pytest.raises(InvalidTopicNameError, match="collides"):
        await admin.create_topics([TopicSpec(underscored)])
    assert underscored not in await admin.list_topics()
    producer = await backend.started_producer(request_timeout_ms=3_000)
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send(underscored, b"x")
    assert underscored not in await admin.list_topics()


@pytest.mark.parametrize(
    ("partitions", "replication", "configs"),
    [(1, 100, {}), (0, 1, {}), (1, 1, {"max.message.bytes": "abc"})],
    ids=["replication-above-brokers", "zero-partitions", "bad-max-message-bytes"],
)
async def test_topics_kafka_cannot_make_are_refused(
    backend: Backend, partitions: int, replication: int, configs: dict[str, str]
) -> None:
    admin = await backend.admin()
    name = backend.name_for("refused")
    spec = TopicSpec(name, partitions=partitions, replication_factor=replication, configs=configs)
    with pytest.raises(TopicCreationError):
        await admin.create_topics([spec])
    assert name not in await admin.list_topics()


async def test_unkeyed_records_spread_and_new_producers_start_anywhere(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    firsts = set()
    for _ in range(10):
        producer = await backend.started_producer()
        firsts.add((await (await producer.send(topic, b"first"))).partition)
        await producer.stop()
    assert len(firsts) > 1, "every new producer put its first unkeyed record on one partition"
    producer = await backend.started_producer()
    spread = {(await (await producer.send(topic, b"x"))).partition for _ in range(30)}
    assert spread == {0, 1, 2}


async def test_a_send_to_a_partition_out_of_range_is_refused(backend: Backend) -> None:
    topic = await backend.topic(partitions=2)
    producer = await backend.started_producer()
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send(topic, b"x", partition=2)
    assert (await (await producer.send(topic, b"x", partition=1))).partition == 1


async def test_end_offsets_of_a_partition_that_does_not_exist_raise(backend: Backend) -> None:
    topic = await backend.topic(partitions=2)
    admin = await backend.admin()
    missing_topic = backend.name_for("missing")
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    await wait_for_assignment(backend, consumer)

    assert await consumer.end_offsets([TopicPartition(topic, 1)]) == {TopicPartition(topic, 1): 0}
    with pytest.raises(UnknownTopicOrPartitionError):
        await consumer.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 2)])
    with pytest.raises(UnknownTopicOrPartitionError):
        await consumer.end_offsets([TopicPartition(missing_topic, 0)])
    assert missing_topic not in await admin.list_topics()


async def test_a_deleted_subscribed_topic_comes_back_empty(backend: Backend) -> None:
    topic = await backend.topic(partitions=1)
    admin = await backend.admin()
    producer = await backend.started_producer()
    await (await producer.send(topic, b"before", partition=0))
    consumer = await backend.started_consumer([topic], backend.name_for("group"))
    assert [r.value for r in await backend.drain(consumer, 1)] == [b"before"]

    await admin.delete_topics([topic])
    deadline = time.monotonic() + backend.timeout_s
    while True:
        assert time.monotonic() < deadline, "the subscribed topic was not re-created"
        assert await consumer.getmany(timeout_ms=100) == {}
        if topic in await admin.list_topics():
            break
    ends = await consumer.end_offsets([TopicPartition(topic, 0)])
    assert ends == {TopicPartition(topic, 0): 0}
