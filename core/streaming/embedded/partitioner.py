"""Kafka's default partitioner: murmur2 for keyed records, spreading for unkeyed ones.

Keyed records must land on the same partition number as with a Kafka client, so that
per-key ordering and co-partitioning hold whichever backend wrote the data.
"""

from __future__ import annotations

import random

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash Kafka's Java client uses (``Utils.murmur2``), unsigned."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class RoundRobin:
    """Spreads unkeyed records over a topic's partitions, one partition after the other.

    Kafka allows any partition for a record without a key (aiokafka picks one at
    random). Each ``RoundRobin`` (one per producer) starts every topic at a random
    partition, so short-lived producers do not all fill partition 0, then cycles,
    which keeps partitions evenly filled.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def choose(self, topic: str, num_partitions: int) -> int:
        """The next partition of ``topic`` in turn (a random one the first time)."""
        start = self._next.get(topic)
        if start is None:
            start = random.randrange(num_partitions)
        current = start % num_partitions
        self._next[topic] = current + 1
        return current
