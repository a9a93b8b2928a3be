"""Ids known done in this process, so a redelivered duplicate costs no round trip.

Kept as chunks, one per call that recorded ids (a done-mark call, a claim that
found ids done), each a set with one expiry time, oldest first. Recording a
batch is one C-level set build; a dict keyed by id paid a Python-visible insert
per id into a large table, about a tenth of a microsecond per message at full
rate, for a cache that is read only when a batch may be a redelivery. Whole
chunks are dropped, oldest first, once the newer ones hold ``size`` ids, so the
cache keeps at least the ``size`` most recently recorded ids (and at most twice
that plus one chunk).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class DoneCache:
    """The most recently recorded ids known done, at least ``size`` of them."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("local_cache_size must not be negative")
        self.size = size
        self._chunks: deque[tuple[float, set[str]]] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, event_id: object) -> bool:
        """True when ``event_id`` is recorded (expired or not): a cheap first look."""
        return any(event_id in ids for _, ids in self._chunks)

    def hit(self, event_id: str, now: float) -> bool:
        """True when ``event_id`` is known done at ``now``; an expired entry is dropped."""
        self._drop_expired(now)
        for expires, ids in reversed(self._chunks):
            if event_id in ids:
                if now < expires:
                    return True
                ids.discard(event_id)
                self._count -= 1
                return False
        return False

    def add(self, event_ids: Iterable[str], expires_at: float) -> None:
        """Remember ``event_ids`` as done until ``expires_at``."""
        if self.size == 0:
            return
        ids = set(event_ids)
        if not ids:
            return
        chunks = self._chunks
        chunks.append((expires_at, ids))
        self._count += len(ids)
        while self._count - len(chunks[0][1]) >= self.size:
            self._count -= len(chunks.popleft()[1])

    def _drop_expired(self, now: float) -> None:
        chunks = self._chunks
        while chunks and chunks[0][0] <= now:
            self._count -= len(chunks.popleft()[1])
