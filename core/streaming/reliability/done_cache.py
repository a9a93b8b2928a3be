"""Ids known done in this process, so a redelivered duplicate costs no round trip.

A plain dict in use order (id -> expiry time): a hit moves the id to the end; when
the dict holds twice its size, the least recently used are dropped in one bulk
step, leaving the ``size`` most recently used. A least-recently-used list that
evicts one id per id added pays a Python step per id once full, which at full
rate is a tenth of the dedup path's CPU; the bulk step costs a C-level copy.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable


class DoneCache:
    """The ``size`` most recently used ids known done (up to twice as many between trims)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("local_cache_size must not be negative")
        self.size = size
        self._ids: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def disjoint(self, event_ids: Iterable[str]) -> bool:
        """True when none of ``event_ids`` is in the cache (expired ones included)."""
        return not self._ids or self._ids.keys().isdisjoint(event_ids)

    def hit(self, event_id: str, now: float) -> bool:
        """True when ``event_id`` is known done at ``now``; an expired entry is dropped."""
        expires = self._ids.pop(event_id, None)
        if expires is None or now >= expires:
            return False
        self._ids[event_id] = expires  # the most recently used now
        return True

    def add(self, event_ids: Iterable[str], expires_at: float) -> None:
        """Remember ``event_ids`` as done until ``expires_at``."""
        if self.size == 0:
            return
        ids = self._ids
        ids.update(zip(event_ids, itertools.repeat(expires_at)))
        if len(ids) > 2 * self.size:
            self._ids = dict(itertools.islice(ids.items(), len(ids) - self.size, None))
