"""Shared helpers for orchestration tests on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KTP

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.infrastructure.message_producer import MessageProducer


def kafka_settings(bootstrap: str, redis_url: str | None = None, **reliability: object) -> Settings:
    """Settings for a service on the test broker (and test Redis, if given)."""
    from pydantic import SecretStr

    base = Settings()
    update: dict[str, object] = {
        "redpanda": RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=10),
        "reliability": base.reliability.model_copy(update=reliability),
    }
    if redis_url:
        update["redis"] = RedisSettings(url=SecretStr(redis_url))
    return base.model_copy(update=update)


async def produce(
    bootstrap: str, topic: str, items: list[tuple[str | None, dict[str, object]]]
) -> list[str]:
    """Publish enveloped events; returns their ids."""
    producer = MessageProducer(RedpandaSettings(bootstrap_servers=bootstrap), "test-feeder")
    try:
        return await producer.send_many(topic, items, "test.event")
    finally:
        await producer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """Committed offset per partition of ``group`` (0 when nothing committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            value = await consumer.committed(KTP(topic, p))
            out[p] = value or 0
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Log end offset per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([KTP(topic, p) for p in range(partitions)])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
