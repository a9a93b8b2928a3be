"""The due-time gate on the embedded broker, with a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.streaming.broker_api import ConsumerOptions
from core.streaming.embedded import InMemoryBroker, InMemoryConsumer
from core.streaming.infrastructure.due_time_gate import HEADER_DUE_MS, DueTimeGate
from core.streaming.types import TopicPartition

TP = TopicPartition("retry", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup() -> AsyncIterator[tuple[InMemoryBroker, DueTimeGate, Clock]]:
    broker = InMemoryBroker(default_partitions=1)
    broker.create_topic("retry", 1)
    clock = Clock()
    gate = DueTimeGate(InMemoryConsumer(broker, ["retry"], "g", ConsumerOptions()), clock=clock)
    await gate.start()
    try:
        yield broker, gate, clock
    finally:
        await gate.stop()


def _put(broker: InMemoryBroker, value: bytes, due_s: float | None) -> None:
    headers = [] if due_s is None else [(HEADER_DUE_MS, str(int(due_s * 1000)).encode())]
    broker.append("retry", value, headers=headers, partition=0)


async def _values(gate: DueTimeGate, timeout_ms: int = 50) -> list[bytes | None]:
    got = await gate.getmany(timeout_ms=timeout_ms)
    return [r.value for records in got.values() for r in records]


async def test_records_are_handed_out_only_once_due(
    setup: tuple[InMemoryBroker, DueTimeGate, Clock],
) -> None:
    broker, gate, clock = setup
    _put(broker, b"due-now", None)
    _put(broker, b"at-1005", 1_005.0)
    _put(broker, b"at-1006", 1_006.0)

    assert await _values(gate, 1_000) == [b"due-now"]
    assert gate.health()["held_partitions"] == 1
    assert gate.health()["next_due_in_s"] == 5.0
    assert await _values(gate) == []
    clock.now = 1_005.0
    assert await _values(gate) == [b"at-1005"]
    clock.now = 1_006.5
    assert await _values(gate) == [b"at-1006"]
    assert gate.health()["held_partitions"] == 0
    _put(broker, b"later", None)
    assert await _values(gate, 1_000) == [b"later"], "the partition was resumed"


async def test_resuming_the_flow_does_not_release_a_held_partition(
    setup: tuple[InMemoryBroker, DueTimeGate, Clock],
) -> None:
    broker, gate, clock = setup
    _put(broker, b"at-1010", 1_010.0)
    assert await _values(gate, 1_000) == []
    gate.pause(*gate.assignment())  # backpressure
    assert gate.paused() == {TP}
    gate.resume(*gate.paused())
    assert gate.paused() == set()
    _put(broker, b"behind", None)
    assert await _values(gate) == [], "still held: nothing after the held record either"
    clock.now = 1_010.0
    assert await _values(gate) == [b"at-1010"]
    assert await _values(gate, 1_000) == [b"behind"]


async def test_a_seek_drops_what_was_held(
    setup: tuple[InMemoryBroker, DueTimeGate, Clock],
) -> None:
    broker, gate, clock = setup
    _put(broker, b"at-2000", 2_000.0)
    assert await _values(gate, 1_000) == []
    assert await gate.position(TP) == 0
    gate.seek(TP, 0)
    assert gate.health()["held_partitions"] == 0
    clock.now = 2_000.0
    assert await _values(gate, 1_000) == [b"at-2000"]
