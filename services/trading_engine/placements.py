"""Resting orders whose placement is not committed yet, under exactly-once.

Each input partition of an exactly-once flow commits its own transaction. An
order placed by a signal (in the signal partition's transaction) and filled by a
tick (in a tick partition's transaction) would leave, if a crash aborted the
first and not the second, a committed fill of an order the ledger never placed.
So a resting order is filled or expired only once the signal that placed it is
committed: the signal flow's committed offset has passed it.
"""

from __future__ import annotations

from collections.abc import Callable

from core.streaming.infrastructure.consumed_message import current_message
from core.streaming.types import TopicPartition

CommittedOffset = Callable[[TopicPartition], int | None]


class PendingPlacements:
    """Client order ids placed by a signal whose offset is not committed yet."""

    def __init__(self, committed_offset: CommittedOffset | None) -> None:
        #: None: the signal flow is not exactly-once; every placement counts as final.
        self._committed_offset = committed_offset
        self._placed_by: dict[str, tuple[TopicPartition, int]] = {}

    def note(self, client_order_id: str) -> None:
        """Remember the signal message now being handled as the placement of an order."""
        message = current_message()
        if self._committed_offset is None or message is None:
            return
        self._placed_by[client_order_id] = (message.topic_partition, message.offset)

    def is_committed(self, client_order_id: str) -> bool:
        """True when the order's placement is committed (or was never in doubt)."""
        placed = self._placed_by.get(client_order_id)
        if placed is None or self._committed_offset is None:
            return True
        tp, offset = placed
        committed = self._committed_offset(tp)
        if committed is None or committed <= offset:
            return False
        del self._placed_by[client_order_id]
        return True

    def forget(self, client_order_id: str) -> None:
        """The order left the book (filled at once, or rejected)."""
        self._placed_by.pop(client_order_id, None)

    def __len__(self) -> int:
        return len(self._placed_by)
