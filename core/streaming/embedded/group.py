"""Consumer groups of the embedded broker: membership, assignment, committed offsets.

The protocol is Kafka's eager rebalance, as aiokafka speaks it. When membership or
the subscribed topics change, every member holding partitions must first give them
all up (its ``on_partitions_revoked`` runs and may still commit them); only when each
of those members has done so is a new assignment computed and handed out. So a
partition is never fetched by two members at once, and commits made while revoking
land before the next owner reads the committed offset. A member that does not give
its partitions up within the rebalance timeout is expelled, as Kafka does, and so is
a member whose heartbeats stop for its session timeout (a killed or hung process).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from core.streaming.types import TopicPartition


class GroupMember(Protocol):
    """What the group needs from a member: its subscription and a way to wake it."""

    @property
    def topics(self) -> frozenset[str]: ...

    @property
    def alive(self) -> bool: ...

    def notify_group_change(self) -> None: ...

    def notify_expelled(self) -> None: ...


def assign_round_robin(
    subscriptions: Mapping[str, frozenset[str]], partitions_of: Callable[[str], int | None]
) -> dict[str, frozenset[TopicPartition]]:
    """Kafka's (and aiokafka's default) round-robin assignor.

    All partitions of all subscribed topics, sorted, are dealt to the members sorted
    by id, skipping members not subscribed to a partition's topic.
    """
    result: dict[str, set[TopicPartition]] = {member: set() for member in subscriptions}
    if not subscriptions:
        return {}
    topics = set().union(*subscriptions.values())
    partitions = sorted(
        TopicPartition(topic, p)
        for topic in topics
        if (count := partitions_of(topic)) is not None
        for p in range(count)
    )
    members = itertools.cycle(sorted(subscriptions))
    for tp in partitions:
        member = next(members)
        while tp.topic not in subscriptions[member]:
            member = next(members)
        result[member].add(tp)
    return {member: frozenset(tps) for member, tps in result.items()}


class ConsumerGroup:
    """One group's members, current generation and assignment, and committed offsets."""

    def __init__(self, group_id: str, partitions_of: Callable[[str], int | None]) -> None:
        self.group_id = group_id
        self.generation = 0
        self.committed: dict[TopicPartition, int] = {}
        self._partitions_of = partitions_of
        self._members: dict[str, GroupMember] = {}
        self._session_s: dict[str, float] = {}
        self._rebalance_s: dict[str, float] = {}
        self._last_heartbeat: dict[str, float] = {}
        self._assignment: dict[str, frozenset[TopicPartition]] = {}
        self._holding: set[str] = set()
        self._awaiting: set[str] = set()
        self._rebalancing = False
        self._rebalance_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer_at = 0.0
        self._member_seq = itertools.count()

    # ------------------------------------------------------------------ state

    @property
    def rebalancing(self) -> bool:
        """True between the start of a rebalance and the new assignment."""
        return self._rebalancing

    @property
    def members(self) -> Mapping[str, GroupMember]:
        """Current members by member id."""
        return self._members

    def assignment(self) -> dict[str, frozenset[TopicPartition]]:
        """The current generation's assignment by member id."""
        return dict(self._assignment)

    def subscribed_topics(self) -> set[str]:
        """Topics any member subscribes to."""
        return set().union(*(m.topics for m in self._members.values()))

    # ------------------------------------------------------------------ membership

    def join(
        self,
        member: GroupMember,
        client_id: str,
        *,
        session_timeout_ms: int = 10_000,
        rebalance_timeout_ms: int = 30_000,
    ) -> str:
        """Add ``member`` and start a rebalance; returns its member id.

        The member must call :meth:`heartbeat` more often than ``session_timeout_ms``
        or it is expelled. The group's rebalance timeout is the largest of its
        members' ``rebalance_timeout_ms``, as in Kafka.
        """
        self._purge_dead()
        member_id = f"{client_id}-{next(self._member_seq):06d}"
        self._members[member_id] = member
        self._session_s[member_id] = session_timeout_ms / 1000
        self._rebalance_s[member_id] = rebalance_timeout_ms / 1000
        self._last_heartbeat[member_id] = time.monotonic()
        if self._rebalancing:
            self._maybe_complete()
        else:
            self.request_rebalance()
        self._arm()
        return member_id

    def heartbeat(self, member_id: str) -> bool:
        """Keep ``member_id``'s session alive; False if the group no longer knows it."""
        if member_id not in self._members:
            return False
        self._last_heartbeat[member_id] = time.monotonic()
        self._arm()
        return True

    def leave(self, member_id: str) -> None:
        """Remove a member (stopped, crashed); the others share its partitions."""
        if self._drop(member_id) is None:
            return
        if self._rebalancing:
            self._maybe_complete()
        else:
            self.request_rebalance()

    def request_rebalance(self) -> None:
        """Begin a rebalance unless one is under way (a new join is included anyway)."""
        if self._rebalancing:
            return
        self._purge_dead()
        if not self._members:
            self._assignment.clear()
            self._holding.clear()
            return
        self._rebalancing = True
        self._awaiting = set(self._holding)
        self._holding.clear()
        self._notify_all()
        if self._awaiting:
            self._rebalance_deadline = time.monotonic() + max(self._rebalance_s.values())
            self._arm()
        else:
            self._complete()

    # ------------------------------------------------------------------ member protocol

    def must_revoke(self, member_id: str) -> bool:
        """True when ``member_id`` has to give up its partitions for a rebalance."""
        return self._rebalancing and member_id in self._awaiting

    def revoked(self, member_id: str) -> None:
        """``member_id`` has given up its partitions."""
        if self._rebalancing and member_id in self._awaiting:
            self._awaiting.discard(member_id)
            self._maybe_complete()

    def adopt(self, member_id: str) -> tuple[int, frozenset[TopicPartition]]:
        """The current generation and ``member_id``'s partitions in it (group must be stable)."""
        if self._rebalancing or member_id not in self._members:
            raise RuntimeError(f"member {member_id} cannot take an assignment now")
        assigned = self._assignment.get(member_id, frozenset())
        if assigned:
            self._holding.add(member_id)
        return self.generation, assigned

    def owns(self, member_id: str, generation: int, tp: TopicPartition) -> bool:
        """True if ``member_id`` (at ``generation``) may commit ``tp`` now.

        While a rebalance waits for it, a member may still commit what it is giving up.
        """
        if member_id not in self._members:
            return False
        if self._rebalancing:
            return member_id in self._awaiting and tp in self._assignment.get(member_id, ())
        return generation == self.generation and tp in self._assignment.get(member_id, ())

    # ------------------------------------------------------------------ internals

    def _drop(self, member_id: str) -> GroupMember | None:
        member = self._members.pop(member_id, None)
        for state in (self._assignment, self._session_s, self._rebalance_s, self._last_heartbeat):
            state.pop(member_id, None)
        self._holding.discard(member_id)
        self._awaiting.discard(member_id)
        return member

    def _purge_dead(self) -> None:
        """Drop members whose event loop has closed: nothing of theirs runs any more."""
        for member_id in [mid for mid, member in self._members.items() if not member.alive]:
            self._drop(member_id)

    def _maybe_complete(self) -> None:
        if self._rebalancing and not self._awaiting:
            self._complete()

    def _complete(self) -> None:
        self._purge_dead()
        subscriptions = {mid: member.topics for mid, member in self._members.items()}
        self._assignment = assign_round_robin(subscriptions, self._partitions_of)
        self.generation += 1
        self._rebalancing = False
        self._awaiting.clear()
        self._notify_all()
        self._arm()

    def _next_deadline(self) -> float | None:
        deadlines = [self._last_heartbeat[m] + self._session_s[m] for m in self._members]
        if self._rebalancing and self._awaiting:
            deadlines.append(self._rebalance_deadline)
        return min(deadlines, default=None)

    def _arm(self) -> None:
        """Arm the timer for the next session or rebalance deadline on the running loop.

        A timer armed on an event loop that has since closed never fires, so a group
        outliving its loop (a process-wide broker across tests) re-arms on the next.
        """
        deadline = self._next_deadline()
        loop = self._timer_loop
        armed = self._timer is not None and loop is not None and not loop.is_closed()
        if deadline is None or (armed and self._timer_at <= deadline):
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = running.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)
        self._timer_loop = running
        self._timer_at = deadline

    def _on_timer(self) -> None:
        """Expel members whose session ran out or who held up a rebalance too long."""
        self._timer = None
        self._timer_loop = None
        now = time.monotonic()
        late = {m for m in self._members if self._last_heartbeat[m] + self._session_s[m] <= now}
        if self._rebalancing and self._awaiting and self._rebalance_deadline <= now:
            late |= self._awaiting
        for member_id in sorted(late):
            member = self._drop(member_id)
            if member is not None:
                member.notify_expelled()
        if late:
            if self._rebalancing:
                self._maybe_complete()
            else:
                self.request_rebalance()
        self._arm()

    def _notify_all(self) -> None:
        for member in list(self._members.values()):
            member.notify_group_change()
