"""Kafka client errors, grouped by what the layers above do about them."""

from __future__ import annotations

from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
)

#: aiokafka errors that mean "the broker is (perhaps briefly) unreachable".
KAFKA_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
)

#: Every error aiokafka raises for a broker's refusal.
KAFKA_ERRORS: tuple[type[BaseException], ...] = (KafkaError,)

#: Errors after which an idempotent producer's sequence state is broken for good.
KAFKA_PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
)
