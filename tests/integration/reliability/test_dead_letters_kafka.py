"""ErrorHandler dead letters on a real Kafka broker: exact bytes, headers, blocking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from core.config.settings import RedpandaSettings
from core.streaming.errors import PermanentError
from core.streaming.infrastructure.consumed_message import ConsumedMessage, decode_record
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.error_handler import (
    DEAD_LETTER_HEADERS,
    HEADER_ATTEMPTS,
    HEADER_CONSUMER_GROUP,
    HEADER_EXCEPTION_TYPE,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_SERVICE,
    ErrorHandler,
    ProcessingOutcome,
)
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.types import Record

if TYPE_CHECKING:
    from tests.conftest import KafkaAdmin

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

ORIGINAL_KEY = b"\x00key-\xff"
ORIGINAL_VALUE = b"\xff\xfe{not json at all\x00"
ORIGINAL_HEADERS = [("event-id", b"abc"), ("x-binary", b"\x00\x01\xff"), ("event-id", b"dup")]


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[MessageProducer]:
    prod = MessageProducer(RedpandaSettings(bootstrap_servers=kafka_bootstrap), "dlq-test")
    await prod.start()
    yield prod
    await prod.stop()


async def wait_until(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail after ``limit_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def read_all(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``count`` records from the start of ``topic`` (bounded wait)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(records) < count and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def original_message(bootstrap: str, topic: str) -> ConsumedMessage:
    """Produce the original record to ``topic`` and read it back as a ConsumedMessage."""
    raw_producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await raw_producer.start()
    try:
        await raw_producer.send_and_wait(
            topic, ORIGINAL_VALUE, key=ORIGINAL_KEY, headers=ORIGINAL_HEADERS, partition=0
        )
    finally:
        await raw_producer.stop()
    [rec] = await read_all(bootstrap, topic, 1)
    return decode_record(
        Record(
            rec.topic,
            rec.partition,
            rec.offset,
            rec.key,
            rec.value,
            tuple(rec.headers),
            rec.timestamp,
        )
    )


async def test_dead_letter_keeps_original_bytes_and_every_header(
    kafka_bootstrap: str,
    kafka_admin: KafkaAdmin,
    unique_name: str,
    producer: MessageProducer,
) -> None:
    source = await kafka_admin.create_topic(f"{unique_name}-orders", partitions=1)
    await kafka_admin.create_topic(f"{source}.dlq", partitions=1)
    msg = await original_message(kafka_bootstrap, source)
    assert not msg.is_decodable

    metrics = MetricsCollector("dlq-test", consumer_group="g1")
    handler = ErrorHandler(
        producer,
        "dlq-test",
        consumer_group="g1",
        max_attempts=3,
        backoff_initial_ms=1,
        metrics=metrics,
    )
    committed: list[int] = []

    async def processing() -> None:
        raise TimeoutError("still slow")

    async def commit() -> None:
        committed.append(msg.offset)

    outcome = await handler.handle_processing_error(msg, TimeoutError("slow"), processing, commit)
    assert outcome is ProcessingOutcome.DEAD_LETTERED
    assert committed == [msg.offset]

    [dead] = await read_all(kafka_bootstrap, f"{source}.dlq", 1)
    assert dead.key == ORIGINAL_KEY
    assert dead.value == ORIGINAL_VALUE
    headers = list(dead.headers)
    assert headers[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS
    assert [name for name, _ in headers[len(ORIGINAL_HEADERS) :]] == list(DEAD_LETTER_HEADERS)
    values = dict(headers)
    assert values[HEADER_ORIGINAL_TOPIC] == source.encode()
    assert values[HEADER_ORIGINAL_PARTITION] == b"0"
    assert values[HEADER_ORIGINAL_OFFSET] == str(msg.offset).encode()
    assert values[HEADER_ORIGINAL_TIMESTAMP] == str(msg.timestamp).encode()
    assert values[HEADER_CONSUMER_GROUP] == b"g1"
    assert values[HEADER_SERVICE] == b"dlq-test"
    assert values[HEADER_EXCEPTION_TYPE] == b"TimeoutError"
    assert values[HEADER_ATTEMPTS] == b"3"
    snap = metrics.snapshot()
    assert snap["retries"] == 2
    assert snap["dead_lettered"] == 1


async def test_refused_dead_letter_topic_blocks_commit_until_fixed(
    kafka_bootstrap: str,
    kafka_admin: KafkaAdmin,
    unique_name: str,
    producer: MessageProducer,
) -> None:
    source = await kafka_admin.create_topic(f"{unique_name}-orders", partitions=1)
    fixed = await kafka_admin.create_topic(f"{unique_name}-fixed.dlq", partitions=1)
    msg = await original_message(kafka_bootstrap, source)
    handler = ErrorHandler(
        producer,
        "dlq-test",
        dead_letter_topic="x" * 300,  # longer than Kafka allows: every write is refused
        dlq_retry_backoff_initial_s=0.01,
        dlq_retry_backoff_max_s=0.05,
    )
    commits = 0

    async def commit() -> None:
        nonlocal commits
        commits += 1

    async def processing() -> None:
        raise AssertionError("a permanent error is not retried")

    task = asyncio.create_task(
        handler.handle_processing_error(msg, PermanentError("bad order"), processing, commit)
    )
    await wait_until(lambda: handler.dead_letter_write_failures >= 3)
    assert handler.dead_letter_blocked
    assert commits == 0
    assert not task.done()

    handler.dead_letter_topic_override = fixed
    assert await asyncio.wait_for(task, 30) is ProcessingOutcome.DEAD_LETTERED
    assert commits == 1
    assert not handler.dead_letter_blocked
    [dead] = await read_all(kafka_bootstrap, fixed, 1)
    assert dead.value == ORIGINAL_VALUE
    assert dead.key == ORIGINAL_KEY
