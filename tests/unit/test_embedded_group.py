"""Consumer groups of the embedded broker: eager rebalances, takeover, expulsion."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from core.streaming.broker_api import ConsumerOptions
from core.streaming.embedded import InMemoryBroker, InMemoryConsumer
from core.streaming.embedded.group import ConsumerGroup, assign_round_robin
from core.streaming.errors import ClientClosedError, CommitError
from core.streaming.types import Record, TopicPartition


def tps(topic: str, *partitions: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in partitions)


ALL = tps("t", 0, 1, 2)
#: Group timeouts short enough for a test to wait out.
FAST = ConsumerOptions(session_timeout_ms=150, heartbeat_interval_ms=30, rebalance_timeout_ms=150)


class Recorder:
    """Records callbacks; optionally runs a hook inside ``on_partitions_revoked``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []
        self.on_revoke: object = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", frozenset(revoked)))
        if self.on_revoke is not None:
            await self.on_revoke(revoked)  # type: ignore[operator]

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(assigned)))


async def settle(*consumers: InMemoryConsumer, rounds: int = 200) -> None:
    """Let background group work finish."""
    for _ in range(rounds):
        await asyncio.sleep(0)
        if all(c._can_fetch() or c._stopped for c in consumers):
            return
    raise AssertionError(f"group never settled: {consumers}")


async def member(
    broker: InMemoryBroker,
    listener: Recorder | None = None,
    topics: list[str] | None = None,
    options: ConsumerOptions | None = None,
) -> InMemoryConsumer:
    consumer = InMemoryConsumer(broker, topics or ["t"], "g", options, listener=listener)
    await consumer.start()
    return consumer


async def drain(consumer: InMemoryConsumer, count: int) -> list[Record]:
    out: list[Record] = []
    while len(out) < count:
        batch = await consumer.getmany(timeout_ms=1000)
        assert batch, f"only {len(out)} of {count} records arrived"
        for records in batch.values():
            out.extend(records)
    return out


def test_round_robin_assignor_matches_kafkas_examples() -> None:
    counts = {"t0": 3, "t1": 3, "t2": 3}
    same = assign_round_robin(
        {"C0": frozenset({"t0", "t1"}), "C1": frozenset({"t0", "t1"})}, counts.get
    )
    assert same == {
        "C0": tps("t0", 0, 2) | tps("t1", 1),
        "C1": tps("t0", 1) | tps("t1", 0, 2),
    }
    uneven = {"t0": 1, "t1": 2, "t2": 3}
    subscriptions = {
        "C0": frozenset({"t0"}),
        "C1": frozenset({"t0", "t1"}),
        "C2": frozenset({"t0", "t1", "t2"}),
    }
    assert assign_round_robin(subscriptions, uneven.get) == {
        "C0": tps("t0", 0),
        "C1": tps("t1", 0),
        "C2": tps("t1", 1) | tps("t2", 0, 1, 2),
    }
    assert assign_round_robin({"C0": frozenset({"missing"})}, counts.get) == {"C0": frozenset()}


async def test_eager_rebalance_callbacks_without_polling() -> None:
    broker = InMemoryBroker()
    la, lb = Recorder(), Recorder()
    a = await member(broker, la)
    await settle(a)
    assert la.events == [("revoked", frozenset()), ("assigned", ALL)]
    b = await member(broker, lb)
    await settle(a, b)
    assert a.assignment() == {TopicPartition("t", 0), TopicPartition("t", 2)}
    assert b.assignment() == {TopicPartition("t", 1)}
    assert la.events[2:] == [("revoked", ALL), ("assigned", tps("t", 0, 2))]
    assert lb.events == [("revoked", frozenset()), ("assigned", tps("t", 1))]


async def test_commit_while_revoking_is_kept_and_the_heir_waits_for_it() -> None:
    broker = InMemoryBroker(default_partitions=1)
    for i in range(10):
        broker.append("t", str(i).encode())
    la = Recorder()
    a = await member(broker, la)
    assert len(await drain(a, 10)) == 10
    release = asyncio.Event()

    async def commit_then_wait(revoked: set[TopicPartition]) -> None:
        await a.commit({TopicPartition("t", 0): 7})
        await release.wait()

    la.on_revoke = commit_then_wait
    b = await member(broker)
    assert await b.getmany(timeout_ms=50) == {}
    assert await a.getmany(timeout_ms=10) == {}
    assert b.assignment() == set()
    release.set()
    await settle(a, b)
    assert broker.committed("g", TopicPartition("t", 0)) == 7
    owner, idle = (a, b) if a.assignment() else (b, a)
    assert idle.assignment() == set()
    assert [r.offset for r in await drain(owner, 3)] == [7, 8, 9]


async def test_a_member_cannot_commit_a_partition_it_lost() -> None:
    broker = InMemoryBroker()
    broker.append("t", b"x", partition=1)
    a = await member(broker)
    await settle(a)
    b = await member(broker)
    await settle(a, b)
    assert TopicPartition("t", 1) in b.assignment()
    with pytest.raises(CommitError, match="not assigned"):
        await a.commit({TopicPartition("t", 1): 1})
    await b.commit({TopicPartition("t", 1): 1})


async def test_stop_runs_no_callback_and_uncommitted_records_come_back() -> None:
    broker = InMemoryBroker()
    for p in range(3):
        broker.append("t", b"x", partition=p)
    la, lb = Recorder(), Recorder()
    a = await member(broker, la)
    b = await member(broker, lb)
    await settle(a, b)
    got_b = await drain(b, len(b.assignment()))
    assert got_b
    before = list(lb.events)
    await b.stop()
    assert lb.events == before
    await settle(a)
    assert a.assignment() == set(ALL)
    again = await drain(a, 3)
    assert {r.topic_partition for r in again} == set(ALL)


async def test_crash_redelivers_from_the_last_commit() -> None:
    broker = InMemoryBroker(default_partitions=1)
    for i in range(6):
        broker.append("t", str(i).encode())
    lc = Recorder()
    doomed = await member(broker, lc, options=FAST)
    assert len(await drain(doomed, 6)) == 6
    await doomed.commit({TopicPartition("t", 0): 2})
    before = list(lc.events)
    await doomed.crash()
    assert lc.events == before
    with pytest.raises(ClientClosedError):
        await doomed.commit({TopicPartition("t", 0): 6})
    # A killed member does not leave: it is still in the group until its session ends.
    assert broker.group_assignment("g") != {}
    heir = await member(broker, options=FAST)
    started = time.monotonic()
    assert [r.offset for r in await drain(heir, 4)] == [2, 3, 4, 5]
    assert time.monotonic() - started >= 0.1
    assert set(broker.group_assignment("g")) == {heir.member_id}


async def test_member_stuck_in_revocation_is_expelled_and_rejoins() -> None:
    broker = InMemoryBroker()
    la = Recorder()
    a = await member(broker, la, options=FAST)
    await settle(a)
    release = asyncio.Event()
    outcome: list[str] = []

    async def stuck(revoked: set[TopicPartition]) -> None:
        await release.wait()
        try:
            await a.commit({TopicPartition("t", 0): 0})
            outcome.append("committed")
        except CommitError:
            outcome.append("refused")

    la.on_revoke = stuck
    b = await member(broker, options=FAST)
    assert await b.getmany(timeout_ms=50) == {}
    await b.getmany(timeout_ms=300)
    await settle(b)
    assert b.assignment() == set(ALL)
    la.on_revoke = None
    release.set()
    await settle(a, b)
    assert outcome == ["refused"]
    assert a.assignment() and b.assignment()
    assert a.assignment() | b.assignment() == set(ALL)
    assert la.events[-1] == ("assigned", frozenset(a.assignment()))


async def test_failing_listener_is_logged_and_the_group_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            raise RuntimeError("boom in revoke")

        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            raise RuntimeError("boom in assign")

    broker = InMemoryBroker()
    broker.append("t", b"x", partition=0)
    with caplog.at_level(logging.ERROR):
        consumer = InMemoryConsumer(broker, ["t"], "g", listener=Broken())
        await consumer.start()
        assert len(await drain(consumer, 1)) == 1
    assert "on_partitions_revoked" in caplog.text
    assert "on_partitions_assigned" in caplog.text


async def test_topics_created_and_deleted_later_rebalance_the_group() -> None:
    broker = InMemoryBroker(auto_create_topics=False)
    la = Recorder()
    consumer = await member(broker, la, topics=["later", "gone"])
    broker.create_topic("gone", 1)
    await settle(consumer)
    assert consumer.assignment() == set(tps("gone", 0))
    broker.append("gone", b"x")
    await drain(consumer, 1)
    await consumer.commit({TopicPartition("gone", 0): 1})

    broker.create_topic("later", 2)
    await settle(consumer)
    assert consumer.assignment() == set(tps("later", 0, 1) | tps("gone", 0))
    broker.delete_topic("gone")
    await settle(consumer)
    assert consumer.assignment() == set(tps("later", 0, 1))
    assert broker.committed("g", TopicPartition("gone", 0)) is None
    assert la.events[-1] == ("assigned", tps("later", 0, 1))


async def test_members_with_different_subscriptions() -> None:
    broker = InMemoryBroker(default_partitions=2)
    only_a = await member(broker, topics=["a"])
    both = await member(broker, topics=["a", "b"])
    await settle(only_a, both)
    assert only_a.assignment() | both.assignment() == set(tps("a", 0, 1) | tps("b", 0, 1))
    assert not only_a.assignment() & set(tps("b", 0, 1))
    broker.append("b", b"x", partition=0)
    broker.append("b", b"y", partition=1)
    assert {r.value for r in await drain(both, 2)} == {b"x", b"y"}


async def test_everyone_leaving_empties_the_group() -> None:
    broker = InMemoryBroker()
    a = await member(broker, options=FAST)
    b = await member(broker, options=FAST)
    await settle(a, b)
    await a.crash()
    await b.stop()
    deadline = time.monotonic() + 2
    while broker.group_assignment("g"):
        assert time.monotonic() < deadline, "the crashed member's session never ended"
        await asyncio.sleep(0.02)
    c = await member(broker)
    await settle(c)
    assert c.assignment() == set(ALL)


def test_members_dead_with_their_event_loop_are_dropped() -> None:
    broker = InMemoryBroker()

    async def first_loop() -> None:
        listener = Recorder()
        a = await member(broker, listener)
        await settle(a)

        async def hang(revoked: set[TopicPartition]) -> None:
            await asyncio.Event().wait()

        listener.on_revoke = hang
        await member(broker)
        await asyncio.sleep(0.01)

    async def second_loop() -> set[TopicPartition]:
        c = InMemoryConsumer(broker, ["t"], "g")
        await c.start()
        await c.getmany(timeout_ms=400)
        await settle(c)
        assignment = c.assignment()
        await c.stop()
        return assignment

    asyncio.run(first_loop())
    assert broker.group("g").rebalancing
    assert asyncio.run(second_loop()) == set(ALL)
    assert not broker.group("g").rebalancing


class FakeMember:
    """A live member driven by hand, to test the group protocol alone."""

    def __init__(self, *topics: str) -> None:
        self.topics = frozenset(topics)
        self.alive = True
        self.changes = 0
        self.expelled = False

    def notify_group_change(self) -> None:
        self.changes += 1

    def notify_expelled(self) -> None:
        self.expelled = True


def test_rebalance_deadline_is_rearmed_after_its_event_loop_closed() -> None:
    group = ConsumerGroup("g", {"t": 2}.get)
    slow, newcomer = FakeMember("t"), FakeMember("t")

    async def first_loop() -> str:
        member_id = group.join(slow, "c", rebalance_timeout_ms=50)
        assert group.adopt(member_id) == (1, tps("t", 0, 1))
        group.join(FakeMember("t"), "c", rebalance_timeout_ms=50)
        assert group.must_revoke(member_id)
        return member_id

    async def second_loop() -> None:
        group.join(newcomer, "c", rebalance_timeout_ms=50)
        assert group.rebalancing
        await asyncio.sleep(0.1)

    slow_id = asyncio.run(first_loop())
    asyncio.run(second_loop())
    assert slow.expelled and slow_id not in group.members
    assert not group.rebalancing
    assert set().union(*group.assignment().values()) == set(tps("t", 0, 1))


def test_commit_rights_follow_the_protocol() -> None:
    group = ConsumerGroup("g", {"t": 2}.get)
    a = group.join(FakeMember("t"), "c")
    generation, owned = group.adopt(a)
    assert owned == tps("t", 0, 1)
    tp = TopicPartition("t", 0)
    assert group.owns(a, generation, tp) and not group.owns(a, generation - 1, tp)
    b = group.join(FakeMember("t"), "c")
    assert group.rebalancing and group.owns(a, generation, tp)
    assert not group.owns(b, generation, tp)
    group.revoked(a)
    assert not group.rebalancing and group.generation == generation + 1
    assert not group.owns(a, generation, tp)
    with pytest.raises(RuntimeError):
        group.adopt("unknown")


async def test_a_member_whose_heartbeats_stop_is_expelled_after_its_session() -> None:
    group = ConsumerGroup("g", {"t": 2}.get)
    silent, beating = FakeMember("t"), FakeMember("t")
    silent_id = group.join(silent, "c", session_timeout_ms=100, rebalance_timeout_ms=100)
    beating_id = group.join(beating, "c", session_timeout_ms=100, rebalance_timeout_ms=100)
    generation = group.generation
    assert not group.rebalancing and len(group.assignment()) == 2
    for _ in range(10):
        await asyncio.sleep(0.03)
        assert group.heartbeat(beating_id)
    assert silent.expelled and silent_id not in group.members
    assert not beating.expelled and beating_id in group.members
    assert not group.heartbeat(silent_id)
    assert group.generation > generation
    assert group.assignment() == {beating_id: tps("t", 0, 1)}


async def test_the_rebalance_waits_for_the_largest_rebalance_timeout_of_its_members() -> None:
    group = ConsumerGroup("g", {"t": 2}.get)
    holder = FakeMember("t")
    holder_id = group.join(holder, "c", session_timeout_ms=10_000, rebalance_timeout_ms=300)
    group.adopt(holder_id)
    group.join(FakeMember("t"), "c", session_timeout_ms=10_000, rebalance_timeout_ms=50)
    assert group.must_revoke(holder_id)
    await asyncio.sleep(0.15)
    assert group.rebalancing and not holder.expelled
    await asyncio.sleep(0.25)
    assert holder.expelled and not group.rebalancing
