"""MessageConsumer and MessageProducer against the real Kafka broker."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.config.settings import RedpandaSettings
from core.streaming.errors import BrokerUnavailableError, MessageTooLargeError
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.types import TopicPartition
from tests.conftest import KafkaAdmin

pytestmark = pytest.mark.kafka


def _config(bootstrap: str) -> RedpandaSettings:
    return RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=5)


async def _collect(
    consumer: MessageConsumer, n: int, timeout_s: float = 30
) -> list[ConsumedMessage]:
    out: list[ConsumedMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} messages arrived"
        out.extend(await consumer.fetch_batch(timeout_ms=200))
    return out


async def test_round_trip_keys_headers_envelopes(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=3)
    producer = MessageProducer(_config(kafka_bootstrap), "tester")
    await producer.start()
    try:
        first = await producer.send(topic, "k1", {"id": "business-id", "qty": 3}, "thing.created")
        second = await producer.send(topic, None, {"qty": 4}, "thing.created", correlation_id="c-9")
    finally:
        await producer.stop()
    consumer = MessageConsumer(_config(kafka_bootstrap), [topic], f"{unique_name}-g")
    await consumer.start()
    try:
        got = sorted(await _collect(consumer, 2), key=lambda m: m.value["data"]["qty"])  # type: ignore[index]
    finally:
        await consumer.stop()
    a, b = got
    assert a.key == b"k1" and b.key is None
    assert a.event_id == first and b.event_id == second
    # A payload with its own id field is still wrapped in an envelope.
    assert a.value is not None and a.value["data"] == {"id": "business-id", "qty": 3}
    assert a.value["type"] == "thing.created" and a.value["source"] == "tester"
    assert a.header("event-id") == first.encode()
    assert a.header("event-type") == b"thing.created"
    assert b.header("correlation-id") == b"c-9"
    assert b.value is not None and b.value["correlation_id"] == "c-9"


async def test_redelivery_starts_at_first_unfinished(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    producer = MessageProducer(_config(kafka_bootstrap), "tester")
    await producer.send_many(topic, [(None, {"n": i}) for i in range(10)])
    await producer.stop()
    group = f"{unique_name}-g"
    consumer = MessageConsumer(_config(kafka_bootstrap), [topic], group)
    await consumer.start()
    messages = await _collect(consumer, 10)
    for message in messages[:4]:
        await consumer.commit(message)
    # offsets 0..3 finished, then 5 finished out of order: the commit stops at 4
    await consumer.commit(messages[5])
    await consumer.commit()
    await consumer.stop()

    again = MessageConsumer(_config(kafka_bootstrap), [topic], group)
    await again.start()
    try:
        redelivered = await _collect(again, 6)
        tp = TopicPartition(topic, 0)
        assert await again.client.committed(tp) == 4
    finally:
        await again.stop()
    assert [m.offset for m in redelivered] == list(range(4, 10))


async def test_out_of_order_finish_commits_contiguous_prefix(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    producer = MessageProducer(_config(kafka_bootstrap), "tester")
    await producer.send_many(topic, [(None, {"n": i}) for i in range(4)])
    await producer.stop()
    consumer = MessageConsumer(_config(kafka_bootstrap), [topic], f"{unique_name}-g")
    await consumer.start()
    try:
        messages = await _collect(consumer, 4)
        for i in (0, 1, 3):
            consumer.mark_finished(messages[i])
        await consumer.flush()
        assert await consumer.client.committed(TopicPartition(topic, 0)) == 2
    finally:
        await consumer.stop()


async def test_per_message_commit_policy_commits_each(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    producer = MessageProducer(_config(kafka_bootstrap), "tester")
    await producer.send_many(topic, [(None, {"n": i}) for i in range(3)])
    await producer.stop()
    consumer = MessageConsumer(
        _config(kafka_bootstrap),
        [topic],
        f"{unique_name}-g",
        commit_policy=CommitPolicy.per_message_sync(),
    )
    await consumer.start()
    try:
        messages = await _collect(consumer, 3)
        await consumer.commit(messages[0])
        assert await consumer.client.committed(TopicPartition(topic, 0)) == 1
        await consumer.commit(messages[1])
        assert await consumer.client.committed(TopicPartition(topic, 0)) == 2
    finally:
        await consumer.stop()


async def test_two_members_share_and_commit_consistently(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=4)
    group = f"{unique_name}-g"
    a = MessageConsumer(_config(kafka_bootstrap), [topic], group)
    b = MessageConsumer(_config(kafka_bootstrap), [topic], group)
    await a.start()
    await b.start()
    producer = MessageProducer(_config(kafka_bootstrap), "tester")
    await producer.send_many(topic, [(f"k{i}", {"n": i}) for i in range(200)])
    await producer.stop()
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while len(seen) < 200:
        assert time.monotonic() < deadline, f"only {len(seen)} of 200 delivered"
        for name, member in (("a", a), ("b", b)):
            for m in await member.fetch_batch(timeout_ms=100):
                assert m.value is not None
                seen[m.value["data"]["n"]] = name
                await member.commit(m)
    assert set(seen) == set(range(200))
    await b.commit()
    await b.stop()
    await a.flush()
    committed = {}
    for p in range(4):
        committed[p] = await a.client.committed(TopicPartition(topic, p))
    await a.stop()
    end = await _end_offsets(kafka_bootstrap, topic, 4)
    assert committed == end


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from aiokafka import TopicPartition as KTP

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([KTP(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def test_undecodable_and_non_object_values_are_marked_not_raised(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    try:
        await raw.send_and_wait(topic, b"\xff\xfe not json")
        await raw.send_and_wait(topic, orjson.dumps([1, 2, 3]))
        await raw.send_and_wait(
            topic, orjson.dumps({"id": "e1", "type": "t", "source": "s", "data": {}})
        )
    finally:
        await raw.stop()
    consumer = MessageConsumer(_config(kafka_bootstrap), [topic], f"{unique_name}-g")
    await consumer.start()
    try:
        bad, array, good = await _collect(consumer, 3)
    finally:
        await consumer.stop()
    assert not bad.is_decodable and bad.raw_value == b"\xff\xfe not json"
    assert bad.decode_error is not None and "JSON" in bad.decode_error
    assert not array.is_decodable and "list" in (array.decode_error or "")
    assert good.is_decodable and good.event_id == "e1"


async def test_unreachable_kafka_fails_clearly_within_timeout() -> None:
    from core.config.settings import Settings

    settings = Settings(
        redpanda=RedpandaSettings(bootstrap_servers="127.0.0.1:1", connect_timeout_s=2),
    )
    manager = ConnectionManager(settings, use_redis=False)
    started = time.monotonic()
    with pytest.raises(
        BrokerUnavailableError, match=r"Kafka not reachable at 127\.0\.0\.1:1 after 2 s"
    ):
        await manager.start()
    assert time.monotonic() - started < 10


async def test_message_above_size_limit_is_refused_whole(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    producer = MessageProducer(_config(kafka_bootstrap), "tester", max_request_size=10_000)
    try:
        with pytest.raises(MessageTooLargeError, match="limit of 10000 bytes"):
            await producer.send(topic, None, {"blob": "x" * 20_000})
        await producer.send(topic, None, {"small": True})
    finally:
        await producer.stop()
    consumer = MessageConsumer(_config(kafka_bootstrap), [topic], f"{unique_name}-g")
    await consumer.start()
    try:
        got = await _collect(consumer, 1)
        await asyncio.sleep(0.5)
        got.extend(await consumer.fetch_batch(timeout_ms=500))
    finally:
        await consumer.stop()
    assert [m.value["data"] for m in got if m.value] == [{"small": True}]


async def test_connection_manager_ensures_topics_idempotently(
    kafka_bootstrap: str, unique_name: str
) -> None:
    from core.config.settings import Settings

    settings = Settings(redpanda=_config(kafka_bootstrap))
    manager = ConnectionManager(settings, use_redis=False)
    await manager.start()
    try:
        first = await manager.ensure_topics([f"{unique_name}.a", f"{unique_name}.b"], partitions=2)
        second = await manager.ensure_topics([f"{unique_name}.a"], partitions=2)
        health = await manager.health()
    finally:
        await manager.stop()
    assert sorted(first) == [f"{unique_name}.a", f"{unique_name}.b"]
    assert second == []
    assert health["kafka"] == "ok"
