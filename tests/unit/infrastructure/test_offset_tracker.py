"""Committable position = lowest unfinished offset, whatever the finish order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.streaming.infrastructure.offset_tracker import PartitionOffsets


def test_gap_in_finished_offsets_stops_the_commit() -> None:
    state = PartitionOffsets(generation=1)
    for offset in range(4):
        state.fetched(offset)
    for offset in (0, 1, 3):
        state.finish(offset)
    assert state.committable() == 2
    state.finish(2)
    assert state.committable() == 4
    assert state.in_flight_count == 0


def test_offsets_with_holes_still_advance() -> None:
    state = PartitionOffsets(generation=1)
    for offset in (10, 11, 15, 16):
        state.fetched(offset)
    state.finish(10)
    state.finish(11)
    assert state.committable() == 15
    state.finish(16)
    assert state.committable() == 15
    state.finish(15)
    assert state.committable() == 17


def test_pending_commit_only_when_moved() -> None:
    state = PartitionOffsets(generation=1)
    assert state.pending_commit() is None
    state.fetched(0)
    state.finish(0)
    assert state.pending_commit() == 1
    state.committed = 1
    assert state.pending_commit() is None


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_committable_never_passes_an_unfinished_offset(order: list[int], k: int) -> None:
    state = PartitionOffsets(generation=1)
    for offset in range(30):
        state.fetched(offset)
    finished = set(order[:k])
    for offset in order[:k]:
        state.finish(offset)
    expected = next((o for o in range(30) if o not in finished), 30)
    assert state.committable() == expected
