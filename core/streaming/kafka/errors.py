"""Kafka client errors, grouped by what the layers above do about them."""

from __future__ import annotations

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
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
