"""Errors the embedded broker raises where Kafka would answer with an error code."""

from __future__ import annotations

from core.streaming.errors import StreamingError


class UnknownTopicOrPartitionError(ValueError):
    """The topic does not exist (and may not be created here), or has no such partition.

    Kafka's ``UNKNOWN_TOPIC_OR_PARTITION``.
    """


class PartitionNotAssignedError(StreamingError):
    """A per-partition call named a partition this member does not own.

    aiokafka raises ``IllegalStateError`` (or an ``AssertionError`` for ``highwater``).
    """


class OffsetOutOfRangeError(StreamingError):
    """The fetch position is outside the log and ``auto_offset_reset`` is ``"none"``."""
