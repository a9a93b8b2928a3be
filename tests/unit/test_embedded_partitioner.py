"""The embedded partitioner must place keys exactly where Kafka's clients do."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from core.streaming.embedded.partitioner import RoundRobin, murmur2, partition_for_key

# Kafka's own test vectors (UtilsTest.testMurmur2), as signed Java ints.
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_kafkas_java_vectors(key: bytes, expected: int) -> None:
    assert _signed(murmur2(key)) == expected


@given(st.binary(max_size=300))
def test_murmur2_equals_aiokafka(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_partition_for_key_equals_aiokafka_default_partitioner(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert partition_for_key(key, count) == DefaultPartitioner()(key, partitions, partitions)


def test_many_realistic_keys_agree_with_aiokafka() -> None:
    keys = [f"NSE:INFY-{i}".encode() for i in range(5000)] + [bytes([i]) for i in range(256)]
    for count in (1, 3, 6, 12, 50):
        partitions = list(range(count))
        for key in keys:
            assert partition_for_key(key, count) == DefaultPartitioner()(
                key, partitions, partitions
            )


def test_partition_for_key_needs_partitions() -> None:
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_round_robin_cycles_per_topic_from_a_random_start() -> None:
    spread = RoundRobin()
    a = [spread.choose("a", 3) for _ in range(7)]
    assert a == [(a[0] + i) % 3 for i in range(7)]
    b = [spread.choose("b", 2) for _ in range(3)]
    assert b == [(b[0] + i) % 2 for i in range(3)]
    firsts = {RoundRobin().choose("t", 3) for _ in range(60)}
    assert firsts == {0, 1, 2}
