"""Smoke tests proving the real Kafka broker and redis-server are usable."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

if TYPE_CHECKING:
    from tests.conftest import KafkaAdmin

pytestmark = pytest.mark.timeout(60)


@pytest.mark.kafka
async def test_kafka_produce_consume_commit(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(f"{unique_name}-smoke", partitions=3)
    group = f"{unique_name}-group"
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(10)}

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for key, value in sent.items():
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        received: dict[bytes, bytes] = {}
        next_offsets: dict[TopicPartition, int] = {}
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for msg in messages:
                    assert msg.key is not None and msg.value is not None
                    received[msg.key] = msg.value
                    next_offsets[tp] = msg.offset + 1
            if len(received) == len(sent):
                break
        assert received == sent

        await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in next_offsets.items()})

        partitions = [TopicPartition(topic, p) for p in range(3)]
        end_offsets = await consumer.end_offsets(partitions)
        assert sum(end_offsets.values()) == len(sent)
        for tp in partitions:
            assert await consumer.committed(tp) == next_offsets.get(tp)
            assert next_offsets.get(tp, 0) == end_offsets[tp]
    finally:
        await consumer.stop()


@pytest.mark.redis
async def test_redis_set_nx_get(redis_url: str, unique_name: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{unique_name}:lock"
        assert await client.set(key, b"first", nx=True, ex=30) is True
        assert await client.set(key, b"second", nx=True, ex=30) is None
        assert await client.get(key) == b"first"
        await client.delete(key)
    finally:
        await client.aclose()
