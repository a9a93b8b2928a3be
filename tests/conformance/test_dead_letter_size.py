"""A dead letter the broker finds too large falls back to compact headers, on both backends.

The limit here is the dead-letter topic's ``max.message.bytes``: the broker refuses
the full dead letter (with its traceback) on the acknowledgement, and the error
handler writes it again with compact headers. On Kafka this depends on the adapter
translating aiokafka's refusal to ``MessageTooLargeError``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.error_handler import (
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TRACEBACK,
    ErrorHandler,
)
from core.streaming.types import TopicSpec

if TYPE_CHECKING:
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)


def _raise_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("é" * 2000)
    _raise_deep(depth - 1)


async def test_a_dead_letter_over_the_topic_limit_is_written_compact(backend: Backend) -> None:
    source = backend.name_for("orders")
    admin = await backend.admin()
    dlq = f"{source}.dlq"
    spec = TopicSpec(dlq, partitions=1, configs={"max.message.bytes": "6000"})
    assert await admin.create_topics([spec]) == [dlq]
    backend.track_topic(dlq)
    producer = MessageProducer(backend.settings, "svc")
    await producer.start()
    handler = ErrorHandler(producer, "svc", dlq_retry_backoff_initial_s=0.005)
    value = b"v" * 2_500
    try:
        _raise_deep(60)  # a message and traceback of well over 6 KB
    except ValueError as exc:
        error = exc
    message = ConsumedMessage.of(
        topic=source, partition=0, offset=7, key=b"k", value=None, raw_value=value
    )
    try:
        await asyncio.wait_for(handler.dead_letter(message, error, attempts=1), 30)
    finally:
        await producer.stop()

    consumer = await backend.started_consumer([dlq], backend.name_for("group"))
    [record] = await backend.drain(consumer, 1)
    headers = dict(record.headers)
    assert (record.key, record.value) == (b"k", value)
    assert headers[HEADER_EXCEPTION_TRACEBACK] == b""
    assert 0 < len(headers[HEADER_EXCEPTION_MESSAGE] or b"") <= 256
    assert handler.dead_letter_write_failures == 0
    assert handler.dead_lettered == 1
