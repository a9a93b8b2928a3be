"""The member side of the embedded broker's group protocol, as aiokafka speaks it.

Each member runs two background tasks: one joins the group, runs the rebalance
listener (``on_partitions_revoked`` with the whole previous assignment, then
``on_partitions_assigned`` with the whole new one, both awaited) and gives
partitions up when the group asks, whether or not ``getmany`` is being called; the
other heartbeats every ``heartbeat_interval_ms``, also while a listener callback
runs, so the group can tell a slow member from a dead one. ``InMemoryConsumer``
adds fetching and offsets on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.config.settings import RedpandaSettings
from core.streaming.broker_api import NO_GENERATION, ConsumerOptions
from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.embedded.group import ConsumerGroup
from core.streaming.errors import ClientClosedError
from core.streaming.types import TopicPartition
from core.topic_names import InvalidTopicNameError, validate_topic_name

if TYPE_CHECKING:
    from core.streaming.broker_api import RebalanceListener

logger = logging.getLogger(__name__)


class GroupMember:
    """A member of one consumer group on the embedded broker: joins, heartbeats, rebalances."""

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
        self._client_id = opts.client_id or "tradestream-consumer"

        self._group: ConsumerGroup | None = None
        self._member_id: str | None = None
        self._generation = NO_GENERATION
        self._ready_generation = -2
        self._assignment: frozenset[TopicPartition] = frozenset()
        # aiokafka reports an (empty) revocation before the first assignment, too.
        self._holding = True
        self._expelled = False

        self._started = False
        self._closing = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()

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
        self._drop_partition_state()
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
        self._drop_partition_state()
        self._holding = False

    async def _adopt(self, group: ConsumerGroup, member_id: str) -> None:
        generation, assigned = group.adopt(member_id)
        self._generation = generation
        self._assignment = assigned
        self._take_partition_state(group, assigned)
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

    def _drop_partition_state(self) -> None:
        """Forget positions and pauses of the partitions given up."""
        raise NotImplementedError

    def _take_partition_state(
        self, group: ConsumerGroup, assigned: frozenset[TopicPartition]
    ) -> None:
        """Set up positions for the partitions just assigned."""
        raise NotImplementedError

    def _can_fetch(self) -> bool:
        group = self._group
        return (
            group is not None
            and not self._closing
            and not self._expelled
            and not group.rebalancing
            and group.generation == self._generation == self._ready_generation
        )


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (not the caller itself) and wait until it has ended."""
    if task is None or task is asyncio.current_task() or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
