"""Producer and admin clients of the embedded broker, and its inspection API."""

from __future__ import annotations

import asyncio

import pytest

from core.streaming.embedded import (
    InMemoryAdmin,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    UnknownTopicOrPartitionError,
)
from core.streaming.errors import ClientClosedError, MessageTooLargeError
from core.streaming.topic_names import InvalidTopicNameError
from core.streaming.types import StoredRecord, TopicPartition, TopicSpec


async def test_send_returns_a_completed_acknowledgement() -> None:
    broker = InMemoryBroker()
    producer = InMemoryProducer(broker)
    await producer.start()
    ack = await producer.send("orders", b"v", key=b"k", headers=[("h", b"1")])
    assert isinstance(ack, asyncio.Future) and ack.done()
    meta = await ack
    assert isinstance(meta, StoredRecord)
    assert (meta.topic, meta.offset) == ("orders", 0)
    assert meta.timestamp > 0
    (record,) = broker.records("orders")
    assert (record.partition, record.key, record.value, record.headers) == (
        meta.partition,
        b"k",
        b"v",
        (("h", b"1"),),
    )


async def test_every_send_is_stored_exactly_once() -> None:
    broker = InMemoryBroker()
    producer = InMemoryProducer(broker)
    await producer.start()
    acks = [await producer.send("t", str(i).encode(), key=b"same") for i in range(50)]
    await producer.flush()
    offsets = [(await ack).offset for ack in acks]
    assert offsets == list(range(50))
    assert [r.value for r in broker.records("t")] == [str(i).encode() for i in range(50)]


async def test_unkeyed_records_are_spread_and_explicit_partition_wins() -> None:
    broker = InMemoryBroker(default_partitions=3)
    producer = InMemoryProducer(broker)
    await producer.start()
    spread = [(await (await producer.send("t", b"x"))).partition for _ in range(6)]
    assert sorted(spread) == [0, 0, 1, 1, 2, 2]
    meta = await (await producer.send("t", b"x", key=b"any", partition=2))
    assert meta.partition == 2
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send("t", b"x", partition=3)
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send("t", b"x", partition=-1)


async def test_missing_topic_without_auto_creation_is_an_error() -> None:
    broker = InMemoryBroker(auto_create_topics=False)
    producer = InMemoryProducer(broker)
    await producer.start()
    with pytest.raises(UnknownTopicOrPartitionError, match="does not exist"):
        await producer.send("nope", b"x")
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.partitions_for("nope")
    assert broker.topics() == {}
    broker.create_topic("yes", 2)
    assert await producer.partitions_for("yes") == {0, 1}


async def test_auto_created_topics_get_the_default_partitions() -> None:
    broker = InMemoryBroker(default_partitions=4)
    producer = InMemoryProducer(broker)
    await producer.start()
    assert await producer.partitions_for("fresh") == {0, 1, 2, 3}
    await producer.send("other", b"x")
    assert broker.topics() == {"fresh": 4, "other": 4}


async def test_too_large_records_name_size_and_limit_and_store_nothing() -> None:
    broker = InMemoryBroker(max_message_bytes=5000)
    producer = InMemoryProducer(broker, max_request_size=1000)
    await producer.start()
    broker.create_topic("t", 1)
    with pytest.raises(MessageTooLargeError, match=r"1\d{3} bytes.*1000"):
        await producer.send("t", b"x" * 1000)
    roomy = InMemoryProducer(broker, max_request_size=10_000)
    await roomy.start()
    ack = await roomy.send("t", b"x" * 6000)  # the broker refuses it on the ack
    with pytest.raises(MessageTooLargeError, match="5000"):
        await ack
    assert broker.records("t") == []
    assert broker.end_offset(TopicPartition("t", 0)) == 0


async def test_bad_input_is_refused() -> None:
    broker = InMemoryBroker()
    producer = InMemoryProducer(broker)
    await producer.start()
    with pytest.raises(InvalidTopicNameError):
        await producer.send("bad name", b"x")
    with pytest.raises(TypeError):
        await producer.send("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await producer.send("t", b"x", headers=[("h", "text")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        await producer.send("t", b"x", headers=[(1, b"x")])  # type: ignore[list-item]
    meta = await (await producer.send("t", bytearray(b"ba"), key=memoryview(b"mv")))  # type: ignore[arg-type]
    (record,) = broker.records("t", meta.partition)
    assert (record.key, record.value) == (b"mv", b"ba")


async def test_producer_lifecycle() -> None:
    broker = InMemoryBroker()
    producer = InMemoryProducer(broker)
    with pytest.raises(ClientClosedError):
        await producer.send("t", b"x")
    await producer.start()
    await producer.start()
    await producer.send("t", b"x")
    await producer.stop()
    await producer.stop()
    await producer.flush()
    with pytest.raises(ClientClosedError):
        await producer.send("t", b"x")
    with pytest.raises(ClientClosedError):
        await producer.partitions_for("t")
    with pytest.raises(ClientClosedError):
        await producer.start()


async def test_admin_is_idempotent_and_validates() -> None:
    broker = InMemoryBroker()
    admin = InMemoryAdmin(broker)
    with pytest.raises(ClientClosedError):
        await admin.list_topics()
    await admin.start()
    specs = [TopicSpec("a", partitions=2), TopicSpec("b", partitions=5)]
    assert await admin.create_topics(specs) == ["a", "b"]
    assert await admin.create_topics([*specs, TopicSpec("c")]) == ["c"]
    assert broker.topics() == {"a": 2, "b": 5, "c": 1}
    assert await admin.list_topics() == {"a", "b", "c"}
    with pytest.raises(InvalidTopicNameError):
        await admin.create_topics([TopicSpec("ok"), TopicSpec("not ok")])
    assert "ok" not in broker.topics()
    with pytest.raises(ValueError):
        await admin.create_topics([TopicSpec("zero", partitions=0)])
    await admin.delete_topics(["a", "missing"])
    assert await admin.list_topics() == {"b", "c"}
    await admin.close()
    await admin.close()
    with pytest.raises(ClientClosedError):
        await admin.create_topics(specs)
    await admin.start()
    assert "b" in await admin.list_topics()


async def test_inspection_api() -> None:
    broker = InMemoryBroker(default_partitions=2, retention_records=3)
    for i in range(5):
        broker.append("t", str(i).encode(), partition=0)
    broker.append("t", b"p1", partition=1)
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert broker.topics() == {"t": 2}
    assert broker.partition_count("t") == 2
    assert [r.value for r in broker.records("t", 0)] == [b"2", b"3", b"4"]
    assert [r.value for r in broker.records("t")] == [b"2", b"3", b"4", b"p1"]
    assert (broker.start_offset(tp0), broker.end_offset(tp0)) == (2, 5)
    assert broker.end_offset(tp1) == 1
    assert broker.committed("g", tp0) is None
    assert broker.lag("g") == {}
    with pytest.raises(UnknownTopicOrPartitionError):
        broker.records("missing")
    with pytest.raises(UnknownTopicOrPartitionError):
        broker.end_offset(TopicPartition("t", 2))
    with pytest.raises(UnknownTopicOrPartitionError):
        broker.partition_count("missing")

    consumer = InMemoryConsumer(broker, ["t"], "g")
    await consumer.start()
    while sum(len(b) for b in (await consumer.getmany(timeout_ms=100)).values()) == 0:
        pass
    await consumer.commit({tp0: 4})
    assert broker.committed("g", tp0) == 4
    assert broker.lag("g") == {tp0: 1, tp1: 1}
    assert broker.groups() == {"g"}
    (member,) = broker.group_assignment("g")
    assert broker.group_assignment("g")[member] == {tp0, tp1}
    await consumer.stop()
    assert broker.lag("g") == {tp0: 1, tp1: 1}
    assert broker.group_assignment("g") == {}
