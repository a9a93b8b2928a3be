"""Errors the embedded broker raises where Kafka would answer with an error code.

They are the framework's own (``core.streaming.errors``), the same the Kafka
adapter raises, re-exported here for the embedded broker's users.
"""

from __future__ import annotations

from core.streaming.errors import (
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)

__all__ = ["OffsetOutOfRangeError", "PartitionNotAssignedError", "UnknownTopicOrPartitionError"]
