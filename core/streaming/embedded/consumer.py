"""The embedded broker's consumer: a group member with Kafka's fetch and offset rules.

It implements ``ConsumerClient`` of ``core.streaming.broker_api`` and follows the
Kafka adapter (``core.streaming.kafka``), down to the errors it raises, so the layers
above cannot tell the backends apart. Group membership (joining, heartbeats,
rebalances) is ``GroupMember``'s; ``getmany`` returns nothing while a rebalance is
under way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from core.streaming.broker_api import ConsumerOptions
from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.embedded.errors import (
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)
from core.streaming.embedded.group import ConsumerGroup
from core.streaming.embedded.log import PartitionLog
from core.streaming.embedded.member import GroupMember
from core.streaming.errors import CommitError
from core.streaming.types import Record, TopicPartition

if TYPE_CHECKING:
    from core.streaming.broker_api import RebalanceListener


class InMemoryConsumer(GroupMember):
    """A consumer group member on the embedded broker (a ``ConsumerClient``)."""

    def __init__(
        self,
        broker: InMemoryBroker,
        topics: Sequence[str],
        group_id: str,
        options: ConsumerOptions | None = None,
        *,
        listener: RebalanceListener | None = None,
    ) -> None:
        super().__init__(broker, topics, group_id, options, listener=listener)
        self._auto_offset_reset = self.options.auto_offset_reset
        self._max_poll_records = self.options.max_poll_records
        self._read_committed = self.options.isolation_level == "read_committed"
        self._order: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._rotation = 0

    def __repr__(self) -> str:
        return (
            f"InMemoryConsumer(group={self.group_id!r}, member={self._member_id!r}, "
            f"topics={sorted(self._topics)}, assignment={sorted(self._assignment)})"
        )

    # ------------------------------------------------------------------ partition state

    def _drop_partition_state(self) -> None:
        self._order = []
        self._positions.clear()
        self._paused.clear()

    def _take_partition_state(
        self, group: ConsumerGroup, assigned: frozenset[TopicPartition]
    ) -> None:
        self._order = sorted(assigned)
        self._paused.clear()
        self._positions = {}
        for tp in self._order:
            committed = group.committed.get(tp)
            if committed is not None:
                self._positions[tp] = committed
            elif self._auto_offset_reset != "none":
                log = self._broker.partition_log(tp)
                if log is not None:
                    self._positions[tp] = self._reset_offset(log)

    # ------------------------------------------------------------------ fetching

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records by partition, at most ``max_records`` in all; waits up to ``timeout_ms``.

        Returns as soon as records are available; empty on timeout, during a
        rebalance, and when the consumer is stopped while waiting.
        """
        self._check()
        limit = self._max_poll_records if max_records is None else max_records
        if limit <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_ms, 0) / 1000
        await asyncio.sleep(0)
        while True:
            self._wakeup.clear()
            if self._stopped or self._closing:
                return {}
            if self._can_fetch():
                batch = self._fetch(limit)
                if batch:
                    return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return {}

    def _fetch(self, limit: int) -> dict[TopicPartition, list[Record]]:
        order = [tp for tp in self._order if tp not in self._paused]
        if not order:
            return {}
        if self._read_committed:
            self._broker.transactions.expire()
        count = len(order)
        start = self._rotation % count
        self._rotation += 1
        out: dict[TopicPartition, list[Record]] = {}
        for i in range(count):
            tp = order[(start + i) % count]
            log = self._broker.partition_log(tp)
            if log is None:
                continue
            position = self._positions.get(tp)
            if position is None:
                position = self._initial_position(tp, log)
            elif not log.start_offset <= position <= log.end_offset:
                position = self._positions[tp] = self._reset_offset(log, position)
            if log.txn is None:
                batch = log.read(position, limit)
                self._positions[tp] = position + len(batch)
            else:
                batch, self._positions[tp] = log.read_visible(position, limit, self._read_committed)
            if batch:
                out[tp] = batch
                limit -= len(batch)
                if limit == 0:
                    break
        return out

    def _initial_position(self, tp: TopicPartition, log: PartitionLog) -> int:
        """Where a partition without a position starts: its committed offset, else the reset.

        Looked up again on every fetch while there is none, as Kafka's consumer does,
        so a commit made after ``auto_offset_reset="none"`` refused gives a position.
        """
        committed = self._group.committed.get(tp) if self._group is not None else None
        if committed is not None and log.start_offset <= committed <= log.end_offset:
            self._positions[tp] = committed
            return committed
        position = self._positions[tp] = self._reset_offset(log, committed)
        return position

    def _reset_offset(self, log: PartitionLog, position: int | None = None) -> int:
        if self._auto_offset_reset == "earliest":
            return log.start_offset
        if self._auto_offset_reset == "latest":
            return log.end_offset
        tp = TopicPartition(log.topic, log.partition)
        if position is None:
            raise OffsetOutOfRangeError(
                f"no committed offset for {tp} in group {self.group_id!r} "
                "and auto_offset_reset is 'none'"
            )
        raise OffsetOutOfRangeError(
            f"position {position} of {tp} is outside the log "
            f"[{log.start_offset}, {log.end_offset}] and auto_offset_reset is 'none'"
        )

    # ------------------------------------------------------------------ offsets

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the group's committed offsets, all or none.

        Raises ``CommitError`` for a partition this member does not own (the group
        rebalanced) and for an offset below 0 or beyond the high watermark.
        """
        self._check()
        if not offsets:
            return
        group = self._group
        member_id = self._member_id
        assert group is not None and member_id is not None
        for tp, offset in offsets.items():
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise TypeError(f"offset for {tp} must be an int, got {type(offset).__name__}")
            if self._expelled or not group.owns(member_id, self._generation, tp):
                raise CommitError(
                    f"commit of {dict(offsets)} refused: {tp} is not assigned to this member "
                    "(the group has rebalanced); nothing was committed"
                )
            log = self._broker.partition_log(tp)
            end = log.end_offset if log is not None else 0
            if not 0 <= offset <= end:
                raise CommitError(
                    f"commit of {dict(offsets)} refused: offset {offset} for {tp} is outside "
                    f"[0, {end}] (the high watermark); nothing was committed"
                )
        group.committed.update(offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for ``tp``, or None."""
        self._check()
        assert self._group is not None
        return self._group.committed.get(tp)

    def assignment(self) -> set[TopicPartition]:
        """Partitions this member owns now (empty when not running)."""
        if not self._started or self._stopped:
            return set()
        return set(self._assignment)

    def _require_assigned(self, tps: Iterable[TopicPartition]) -> None:
        missing = [tp for tp in tps if tp not in self._assignment]
        if missing:
            raise PartitionNotAssignedError(f"partitions {missing} are not assigned")

    def pause(self, *tps: TopicPartition) -> None:
        """Stop returning records of ``tps`` until resumed; a rebalance clears it, as aiokafka."""
        self._check()
        self._require_assigned(tps)
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        """Return records of ``tps`` again."""
        self._check()
        self._require_assigned(tps)
        self._paused.difference_update(tps)
        self._wakeup.set()

    def paused(self) -> set[TopicPartition]:
        """The paused partitions (empty when not running)."""
        if not self._started or self._stopped:
            return set()
        return set(self._paused)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The end offset of an assigned partition (Kafka knows it only after a fetch)."""
        self._check()
        self._require_assigned((tp,))
        log = self._broker.partition_log(tp)
        return log.end_offset if log is not None else None

    async def position(self, tp: TopicPartition) -> int:
        """Offset of the next record ``getmany`` returns for an assigned ``tp``."""
        self._check()
        self._require_assigned((tp,))
        position = self._positions.get(tp)
        if position is None:
            log = self._broker.partition_log(tp)
            if log is None:
                raise PartitionNotAssignedError(f"partition {tp} no longer exists")
            position = self._initial_position(tp, log)
        return position

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` next (reset per ``auto_offset_reset`` if out of range)."""
        self._check()
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError("Offset must be a positive integer")
        self._require_assigned((tp,))
        self._positions[tp] = offset
        self._wakeup.set()

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermark of each of ``tps`` (assigned or not); the last stable offset
        for a ``read_committed`` consumer, as Kafka answers it.

        Raises ``UnknownTopicOrPartitionError`` when one of them does not exist.
        """
        self._check()
        result: dict[TopicPartition, int] = {}
        for tp in tps:
            log = self._broker.partition_log(tp)
            if log is None:
                raise UnknownTopicOrPartitionError(f"partition {tp} does not exist")
            result[tp] = log.stable_end() if self._read_committed else log.end_offset
        return result
