"""The Kafka adapter's translation of a broker's size refusal on the acknowledgement.

Driven through aiokafka's own ``MessageBatch.failure`` on a stand-in batch; the
same path on a real broker is in ``tests/conformance/test_edge_semantics.py``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import MessageBatch

from core.streaming.errors import MessageTooLargeError
from core.streaming.kafka import KafkaProducerClient, acks


def _batch() -> SimpleNamespace:
    loop = asyncio.get_running_loop()
    return SimpleNamespace(
        tp=TopicPartition("orders", 0),
        future=loop.create_future(),
        _msg_futures=[(loop.create_future(), None)],
        _drain_waiter=loop.create_future(),
    )


async def test_the_adapter_installs_the_translation() -> None:
    assert KafkaProducerClient is not None
    assert acks.installed()


async def test_batches_of_the_adapters_producers_fail_with_our_error() -> None:
    batch = _batch()
    with acks.translated_refusals():
        MessageBatch.failure(batch, MessageSizeTooLargeError())
    error = batch._msg_futures[0][0].exception()
    assert isinstance(error, MessageTooLargeError) and "orders" in str(error)
    assert "MessageSizeTooLargeError" in str(error)


async def test_other_errors_and_other_producers_are_left_alone() -> None:
    batch = _batch()
    with acks.translated_refusals():
        MessageBatch.failure(batch, KafkaTimeoutError())
    assert isinstance(batch._msg_futures[0][0].exception(), KafkaTimeoutError)
    outside = _batch()
    MessageBatch.failure(outside, MessageSizeTooLargeError())
    assert type(outside._msg_futures[0][0].exception()) is MessageSizeTooLargeError
