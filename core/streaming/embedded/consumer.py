"""The embedded broker's consumer: a group member with Kafka's fetch and offset rules.

It implements ``ConsumerClient`` of ``core.streaming.broker_api`` and follows the
Kafka adapter (``core.streaming.kafka``), down to the errors it raises, so the layers
above cannot tell the backends apart.

Group coordination runs as aiokafka's does: each consumer has a background task that
joins the group, runs the rebalance listener (``on_partitions_revoked`` with the whole
previous assignment, then ``on_partitions_assigned`` with the whole new one, both
awaited) and gives partitions up when the group asks, whether or not ``getmany`` is
being called. ``getmany`` returns nothing while a rebalance is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from core.config.settings import RedpandaSettings
from core.streaming.broker_api import NO_GENERATION, ConsumerOptions
from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.embedded.errors import (
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)
from core.streaming.embedded.group import ConsumerGroup
from core.streaming.embedded.log import PartitionLog
from core.streaming.errors import ClientClosedError, CommitError
from core.streaming.types import Record, TopicPartition
from core.topic_names import InvalidTopicNameError, validate_topic_name

if TYPE_CHECKING:
    from core.streaming.broker_api import RebalanceListener

logger = logging.getLogger(__name__)


class InMemoryConsumer:
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
        if isinstance(topics, str):
            raise TypeError("topics must be a sequence of topic names, not one string")
        # Timeouts left unset take the settings' defaults (create_consumer resolves them).
        opts = (options or ConsumerOptions()).resolve(RedpandaSettings())
        if not group_id:
            raise ValueError("group_id is required")
        self._broker = broker
        self._topics = frozenset(validate_topic_name(t) for t in topics)
        self.group_id = group_id
        self._listener = listener
        self.options = opts
        self._auto_offset_reset = opts.auto_offset_reset
        self._max_poll_records = opts.max_poll_records
        self._client_id = opts.client_id or "tradestream-consumer"

        self._group: ConsumerGroup | None = None
        self._member_id: str | None = None
        self._generation = NO_GENERATION
        self._ready_generation = -2
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._order: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        # aiokafka reports an (empty) revocation before the first assignment, too.
        self._holding = True
        self._expelled = False
        self._rotation = 0

        self._started = False
        self._closing = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"InMemoryConsumer(group={self.group_id!r}, member={self._member_id!r}, "
            f"topics={sorted(self._topics)}, assignment={sorted(self._assignment)})"
        )

    # ------------------------------------------------------------------ group member protocol

    @property
    def topics(self) -> frozenset[str]:
        """The subscribed topics."""
        return self._topics

    @property
    def alive(self) -> bool:
        """False once this member's event loop has closed: nothing of it can run again."""
        return self._loop is not None and not self._loop.is_closed()

    @property
    def member_id(self) -> str | None:
        """Id in the group while a member, else None."""
        return None if self._stopped else self._member_id

    @property
    def generation(self) -> int:
        """The group generation of the current assignment; -1 before the first one."""
        return NO_GENERATION if self._stopped else self._generation

    def notify_group_change(self) -> None:
        """The group started or finished a rebalance."""
        self._changed.set()
        self._wakeup.set()

    def notify_expelled(self) -> None:
        """The group expelled this member (rebalance or session timeout); it will rejoin."""
        self._expelled = True
        self.notify_group_change()

    def notify_data(self) -> None:
        """Records were appended to a subscribed topic."""
        self._wakeup.set()

    # ------------------------------------------------------------------ lifecycle

    def _check(self) -> None:
        if self._stopped:
            raise ClientClosedError("consumer is stopped")
        if not self._started:
            raise ClientClosedError("consumer is not started")

    async def start(self) -> None:
        """Join the group; partitions arrive shortly after, from the background."""
        if self._started and not self._stopped:
            return
        if self._stopped:
            raise ClientClosedError("a stopped consumer cannot be restarted")
        loop = asyncio.get_running_loop()
        if self._broker.auto_create_topics:
            # Kafka creates subscribed topics on the consumer's metadata request, too.
            for topic in sorted(self._topics):
                # A name colliding with another topic is not created, as on Kafka.
                with contextlib.suppress(InvalidTopicNameError):
                    self._broker.create_topic(topic)
        self._group = self._broker.group(self.group_id)
        self._loop = loop
        self._task = loop.create_task(self._coordinate(), name=f"embedded-consumer-{self.group_id}")
        self._heartbeats = loop.create_task(
            self._heartbeat(), name=f"embedded-heartbeat-{self.group_id}"
        )
        self._member_id = self._join(self._group)
        self._broker.watch(self)
        self._started = True

    def _join(self, group: ConsumerGroup) -> str:
        return group.join(
            self,
            self._client_id,
            session_timeout_ms=self.options.session_timeout_ms or 0,
            rebalance_timeout_ms=self.options.rebalance_timeout_ms or 0,
        )

    async def stop(self) -> None:
        """Leave the group (idempotent). Like aiokafka, no revocation callback is run.

        Commit what finished before calling this; a listener callback already running
        is allowed to finish first.
        """
        if self._stopped:
            return
        self._closing = True
        self.notify_group_change()
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            timeout_s = (self.options.rebalance_timeout_ms or 0) / 1000
            _, pending = await asyncio.wait({task}, timeout=timeout_s)
            if pending:
                await _cancel(task)
        await self._halt(leave=True)

    async def crash(self) -> None:
        """Die like a killed process: heartbeats stop, nothing is committed, no callback runs.

        The member does not leave: as with Kafka, the group notices when its session
        timeout passes without a heartbeat (or when a rebalance waits on it for the
        rebalance timeout), then hands its partitions to the others, which resume
        from the last committed offsets, so records fetched since then come again.
        """
        if self._stopped:
            return
        self._closing = True
        await _cancel(self._task)
        await self._halt(leave=False)

    async def _halt(self, *, leave: bool) -> None:
        await _cancel(self._heartbeats)
        if leave and self._group is not None and self._member_id is not None:
            self._group.leave(self._member_id)
        self._broker.unwatch(self)
        self._stopped = True
        self._task = None
        self._heartbeats = None
        self._assignment = frozenset()
        self._order = []
        self._positions.clear()
        self._paused.clear()
        self._wakeup.set()

    # ------------------------------------------------------------------ coordination

    async def _heartbeat(self) -> None:
        """Beat every ``heartbeat_interval_ms``, also while a listener callback runs."""
        interval_s = (self.options.heartbeat_interval_ms or 0) / 1000
        while not self._closing:
            await asyncio.sleep(interval_s)
            group, member_id = self._group, self._member_id
            if group is not None and member_id is not None:
                group.heartbeat(member_id)

    async def _coordinate(self) -> None:
        try:
            while not self._closing:
                self._changed.clear()
                await self._sync()
                if self._closing:
                    return
                await self._changed.wait()
        except Exception:
            logger.exception("embedded consumer %s: group coordination failed", self._member_id)

    async def _sync(self) -> None:
        """Bring this member in line with its group: give up, rejoin, take partitions."""
        group = self._group
        assert group is not None
        while not self._closing:
            member_id = self._member_id
            assert member_id is not None
            if self._expelled:
                self._expelled = False
                if self._holding:
                    await self._revoke()
                if self._closing:
                    return
                self._member_id = self._join(group)
                continue
            if group.must_revoke(member_id):
                await self._revoke()
                group.revoked(member_id)
                continue
            if not group.rebalancing and self._generation != group.generation:
                if self._holding:
                    await self._revoke()
                    continue
                await self._adopt(group, member_id)
                continue
            return

    async def _revoke(self) -> None:
        revoked = set(self._assignment)
        self._ready_generation = -2
        if self._listener is not None:
            try:
                await self._listener.on_partitions_revoked(revoked)
            except Exception:
                logger.exception(
                    "rebalance listener of group %s failed in on_partitions_revoked",
                    self.group_id,
                )
        self._assignment = frozenset()
        self._order = []
        self._positions.clear()
        self._paused.clear()
        self._holding = False

    async def _adopt(self, group: ConsumerGroup, member_id: str) -> None:
        generation, assigned = group.adopt(member_id)
        self._generation = generation
        self._assignment = assigned
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
        self._holding = True
        if self._listener is not None:
            try:
                await self._listener.on_partitions_assigned(set(assigned))
            except Exception:
                logger.exception(
                    "rebalance listener of group %s failed in on_partitions_assigned",
                    self.group_id,
                )
        self._ready_generation = generation
        self._wakeup.set()

    def _can_fetch(self) -> bool:
        group = self._group
        return (
            group is not None
            and not self._closing
            and not self._expelled
            and not group.rebalancing
            and group.generation == self._generation == self._ready_generation
        )

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
            batch = log.read(position, limit)
            if batch:
                out[tp] = batch
                self._positions[tp] = position + len(batch)
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
        """High watermark of each of ``tps`` (assigned or not).

        Raises ``UnknownTopicOrPartitionError`` when one of them does not exist.
        """
        self._check()
        result: dict[TopicPartition, int] = {}
        for tp in tps:
            log = self._broker.partition_log(tp)
            if log is None:
                raise UnknownTopicOrPartitionError(f"partition {tp} does not exist")
            result[tp] = log.end_offset
        return result


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (not the caller itself) and wait until it has ended."""
    if task is None or task is asyncio.current_task() or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
