"""Group generations and member ids, the fence for work done under an assignment.

Both backends: the generation grows with every rebalance, so a partition's new
owner always sees a higher generation than its previous owner had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.streaming.types import TopicPartition

if TYPE_CHECKING:
    from core.streaming.broker_api import ConsumerClient
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)


class GenerationListener:
    """Notes the member's generation and id each time the group hands it partitions."""

    def __init__(self) -> None:
        self.consumer: ConsumerClient | None = None
        self.assigned: list[tuple[int, str | None, frozenset[TopicPartition]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        self.assigned.append(
            (self.consumer.generation, self.consumer.member_id, frozenset(assigned))
        )


async def test_generation_grows_with_every_rebalance_and_member_ids_differ(
    backend: Backend,
) -> None:
    topic = await backend.topic(partitions=2)
    group = backend.name_for("group")
    everything = {TopicPartition(topic, p) for p in range(2)}
    listener_a, listener_b = GenerationListener(), GenerationListener()
    a = backend.consumer([topic], group, listener=listener_a)
    listener_a.consumer = a
    assert (a.generation, a.member_id) == (-1, None)
    await a.start()
    await backend.poll_until([a], lambda _: a.assignment() == everything, what="a owns all")
    first = a.generation
    assert first >= 1
    assert isinstance(a.member_id, str) and a.member_id
    assert listener_a.assigned[-1] == (first, a.member_id, frozenset(everything))

    b = backend.consumer([topic], group, listener=listener_b)
    listener_b.consumer = b
    await b.start()

    def split(_: object) -> bool:
        return len(a.assignment()) == 1 and len(b.assignment()) == 1

    await backend.poll_until([a, b], split, what="a and b to split the partitions")
    second = b.generation
    # The partition b took over was owned by a at a lower generation.
    assert second > first
    assert a.generation == second
    assert listener_b.assigned[-1][0] == second
    assert a.member_id != b.member_id

    await b.stop()
    assert (b.generation, b.member_id) == (-1, None)
    await backend.poll_until([a], lambda _: a.assignment() == everything, what="a takes all")
    assert a.generation > second
    assert listener_a.assigned[-1][0] == a.generation
