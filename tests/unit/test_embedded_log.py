"""Partition logs: offsets, slicing reads, bounded retention, record sizing."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from core.streaming.embedded.log import PartitionLog, estimate_record_size, record_batch_size


def _fill(log: PartitionLog, count: int) -> None:
    for i in range(count):
        log.append(None, str(i).encode(), (), i)


def test_offsets_are_consecutive_and_reads_slice() -> None:
    log = PartitionLog("t", 2)
    _fill(log, 10)
    assert (log.start_offset, log.end_offset, len(log)) == (0, 10, 10)
    batch = log.read(3, 4)
    assert [r.offset for r in batch] == [3, 4, 5, 6]
    assert {(r.topic, r.partition) for r in batch} == {("t", 2)}
    assert log.read(10, 5) == []
    assert [r.offset for r in log.read(8, 500)] == [8, 9]


def test_retention_drops_the_oldest_and_moves_the_log_start() -> None:
    log = PartitionLog("t", 0, retention_records=5)
    _fill(log, 12)
    assert (log.start_offset, log.end_offset, len(log)) == (7, 12, 5)
    assert [r.offset for r in log.retained()] == [7, 8, 9, 10, 11]
    assert [r.value for r in log.read(7, 2)] == [b"7", b"8"]


def test_retention_stays_exact_across_compaction() -> None:
    log = PartitionLog("t", 0, retention_records=100)
    _fill(log, 5000)
    assert (log.start_offset, log.end_offset, len(log)) == (4900, 5000, 100)
    assert [r.offset for r in log.read(4990, 3)] == [4990, 4991, 4992]
    assert len(log._records) < 2 * 1024 + 100


def test_headers_are_stored_as_a_tuple() -> None:
    log = PartitionLog("t", 0)
    record = log.append(b"k", b"v", [("a", b"1")], 5)
    assert record.headers == (("a", b"1"),)
    assert record.timestamp == 5


headers_strategy = st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=50)), max_size=5)


@given(
    st.none() | st.binary(max_size=2000), st.none() | st.binary(max_size=70000), headers_strategy
)
def test_size_estimate_equals_aiokafkas(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    expected = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert estimate_record_size(key, value, headers) == expected


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, b"v", []),
        (b"k" * 300, None, [("n", None), ("h", b"x" * 200)]),
        (b"", b"v" * 70_000, [("ü", b"")]),
    ],
)
def test_record_batch_size_is_the_size_of_the_batch_aiokafka_builds(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 10_000_000)
    builder.append(0, 1_700_000_000_000, key, value, headers)
    assert record_batch_size(key, value, headers) == len(builder.build())
