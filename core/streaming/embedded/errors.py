"""Errors the embedded broker raises where Kafka would answer with an error code."""

from __future__ import annotations

from core.streaming.errors import (
    PartitionNotAssignedError,
    StreamingError,
    UnknownTopicOrPartitionError,
)

__all__ = ["OffsetOutOfRangeError", "PartitionNotAssignedError", "UnknownTopicOrPartitionError"]


class OffsetOutOfRangeError(StreamingError):
    """The fetch position is outside the log and ``auto_offset_reset`` is ``"none"``."""
