"""Which offsets of a partition are finished, and how far a commit may go.

A commit may only cover offsets whose messages reached a final state, so the
committable position of a partition is the lowest offset still in flight, or
one past the last fetched offset when nothing is in flight. Offsets need not be
contiguous (compaction and transaction markers leave gaps): the tracker follows
the fetched offsets themselves, not arithmetic on them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice


@dataclass
class PartitionOffsets:
    """Finished/in-flight bookkeeping for one partition of one assignment."""

    generation: int
    in_flight: deque[int] = field(default_factory=deque)
    finished_ahead: set[int] = field(default_factory=set)
    next_position: int | None = None  # one past the last fetched offset
    committed: int | None = None  # last position sent to the broker

    def fetched(self, offset: int) -> None:
        """Record that ``offset`` was handed out for processing."""
        self.in_flight.append(offset)
        self.next_position = offset + 1

    def fetched_many(self, offsets: list[int]) -> None:
        """Record that ``offsets`` (ascending) were handed out for processing."""
        if offsets:
            self.in_flight.extend(offsets)
            self.next_position = offsets[-1] + 1

    def finish(self, offset: int) -> None:
        """Mark ``offset`` final (handled, skipped or dead-lettered)."""
        if self.in_flight and self.in_flight[0] == offset:
            self.in_flight.popleft()
            while self.in_flight and self.in_flight[0] in self.finished_ahead:
                self.finished_ahead.discard(self.in_flight.popleft())
        else:
            self.finished_ahead.add(offset)

    def finish_run(self, offsets: list[int]) -> None:
        """:meth:`finish` for many offsets; in bulk when they are the oldest in flight.

        In a partition-ordered flow a run's offsets usually are exactly the oldest
        ones in flight: one list comparison then replaces a step per offset.
        """
        in_flight = self.in_flight
        n = len(offsets)
        if n and in_flight and in_flight[0] == offsets[0] and list(islice(in_flight, n)) == offsets:
            pop = in_flight.popleft
            for _ in range(n):
                pop()
            ahead = self.finished_ahead
            while ahead and in_flight and in_flight[0] in ahead:
                ahead.discard(pop())
            return
        for offset in offsets:
            self.finish(offset)

    def committable(self) -> int | None:
        """Position a commit may record now: all offsets below it are final."""
        if self.in_flight:
            return self.in_flight[0]
        return self.next_position

    def pending_commit(self) -> int | None:
        """The committable position if it moved past the last commit, else ``None``."""
        position = self.committable()
        if position is None or position == self.committed:
            return None
        return position

    @property
    def in_flight_count(self) -> int:
        """Messages handed out and not yet final."""
        return len(self.in_flight) - len(self.finished_ahead)


@dataclass(frozen=True)
class CommitPolicy:
    """When finished offsets are committed: every N finished or T ms, whichever first.

    ``per_message=True`` commits synchronously after every finished message
    (safe, but one broker round trip per message).
    """

    every: int = 500
    interval_ms: int = 1_000
    per_message: bool = False

    @classmethod
    def per_message_sync(cls) -> CommitPolicy:
        """A commit after every finished message."""
        return cls(every=1, interval_ms=0, per_message=True)
