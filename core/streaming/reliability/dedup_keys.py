"""Where a service's dedup records live in Redis: shards, claims hashes, done sets.

Keys carry a hash tag per shard (``dedup:{<service>:<group>:<shard>}:...``), so
every script call touches one slot and runs on a Redis Cluster as well. An id's
shard is the same in every process (CRC32 of its key form). Done sets are kept
per time bucket of ``ttl_seconds``: an id counts as done in the current and the
previous bucket.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from core.streaming.reliability.dedup_scripts import DEFAULT_GROUP, KEY_PREFIX, key_id


class DedupKeys:
    """The key layout of one service and consumer group."""

    def __init__(
        self,
        service_name: str,
        consumer_group: str | None,
        ttl_seconds: int,
        shards: int,
        wall_clock: Callable[[], float],
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.service_name = service_name
        self.consumer_group = consumer_group or DEFAULT_GROUP
        self.ttl_seconds = ttl_seconds
        self.shards = shards
        self._wall_clock = wall_clock
        self._tags = [
            f"{KEY_PREFIX}:{{{service_name}:{self.consumer_group}:{n}}}" for n in range(shards)
        ]

    def shard_of(self, event_id: str) -> int:
        """The shard holding ``event_id`` (the same in every process)."""
        if self.shards == 1:
            return 0
        return zlib.crc32(key_id(event_id).encode("utf-8", "surrogatepass")) % self.shards

    def claims_key(self, shard: int) -> str:
        """The claims hash of a shard."""
        return f"{self._tags[shard]}:claims"

    def done_key(self, shard: int, bucket: int) -> str:
        """The done set of a shard for one time bucket."""
        return f"{self._tags[shard]}:done:{bucket}"

    def current_bucket(self) -> int:
        """The time bucket done ids are written to now."""
        return int(self._wall_clock() // self.ttl_seconds)

    def done_lifetime(self, bucket: int) -> float:
        """Seconds an id found done now is still certainly remembered (to bucket's end)."""
        return max(0.0, (bucket + 1) * self.ttl_seconds - self._wall_clock())

    def key_for(self, event_id: str) -> str:
        """Where ``event_id``'s claim lives: the claims hash of its shard."""
        return self.claims_key(self.shard_of(event_id))
