"""Pure message consumption: fetch in batches, decode, track and commit offsets.

The consumer never runs business logic. Callers report each message as final
with :meth:`MessageConsumer.commit` (or :meth:`mark_finished`); offsets are then
committed per partition as *highest contiguous finished offset + 1*, under a
:class:`CommitPolicy`, on partition revocation, and on stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerClient, ConsumerOptions, create_consumer
from core.streaming.errors import ClientClosedError
from core.streaming.infrastructure.closing import bounded_close
from core.streaming.infrastructure.consumed_message import ConsumedMessage, decode_record
from core.streaming.infrastructure.offset_tracker import CommitPolicy, PartitionOffsets
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

RevocationHook = Callable[[set[TopicPartition]], Awaitable[None]]
CommitListener = Callable[[dict[TopicPartition, int]], None]


class MessageConsumer:
    """One consumer flow's Kafka consumer: topics, group id, offsets."""

    def __init__(
        self,
        config: RedpandaSettings,
        topics: Sequence[str],
        group_id: str,
        *,
        commit_policy: CommitPolicy | None = None,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
        fetch_timeout_ms: int = 100,
        commit_timeout_s: float = 10.0,
        client_factory: Callable[..., ConsumerClient] | None = None,
    ) -> None:
        self.config = config
        self.topics = list(topics)
        self.group_id = group_id
        self.commit_policy = commit_policy or CommitPolicy()
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.fetch_timeout_ms = fetch_timeout_ms
        self.commit_timeout_s = commit_timeout_s
        self._client_factory = client_factory or create_consumer
        self._client: ConsumerClient | None = None
        self._running = False
        self._stopped = False
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._generation = 0
        self._finished_since_commit = 0
        self._last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._revocation_hook: RevocationHook | None = None
        self._commit_listeners: list[CommitListener] = []
        self._assigned_event = asyncio.Event()
        self._joined = False
        self.commits = 0
        self.commit_failures = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._running

    @property
    def client(self) -> ConsumerClient:
        """The underlying client; raises if not started."""
        if self._client is None:
            raise ClientClosedError(f"consumer for {self.topics} is not started")
        return self._client

    async def start(self) -> None:
        """Join the group and subscribe. Idempotent."""
        if self._running:
            return
        self._stopped = False
        client = self._client_factory(
            self.config,
            self.topics,
            self.group_id,
            ConsumerOptions(self.auto_offset_reset, self.max_poll_records),
            listener=self,
        )
        await client.start()
        self._client = client
        self._running = True
        logger.info("consumer started topics=%s group=%s", self.topics, self.group_id)

    async def stop(self) -> None:
        """Commit what finished, then leave the group. Idempotent."""
        if not self._running or self._client is None:
            return
        self._running = False
        try:
            await asyncio.wait_for(self.flush(), self.commit_timeout_s)
        except TimeoutError:
            logger.error(
                "final commit for group %s got no answer within %s s; the uncommitted "
                "messages will be delivered again",
                self.group_id,
                self.commit_timeout_s,
            )
        finally:
            client, self._client = self._client, None
            self._offsets.clear()
            self._stopped = True
            self._joined = False
            self._assigned_event.clear()
            await bounded_close(
                client.stop(), self.commit_timeout_s, f"consumer of {self.group_id}"
            )
            logger.info("consumer stopped topics=%s group=%s", self.topics, self.group_id)

    def set_revocation_hook(self, hook: RevocationHook | None) -> None:
        """Awaited on revocation before offsets are committed (to drain in-flight work)."""
        self._revocation_hook = hook

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called with the offsets after every successful commit (for metrics)."""
        self._commit_listeners.append(listener)

    # ------------------------------------------------------------------ fetching

    async def fetch_batch(
        self, timeout_ms: int | None = None, max_records: int | None = None
    ) -> list[ConsumedMessage]:
        """Fetch the next batch (possibly empty), decoded; commits on the policy's timer."""
        client = self.client
        await self._maybe_commit()
        limit = self.max_poll_records if max_records is None else max(1, max_records)
        batches = await client.getmany(
            timeout_ms=self.fetch_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=min(limit, self.max_poll_records),
        )
        out: list[ConsumedMessage] = []
        for tp, records in batches.items():
            if not records:
                continue
            state = self._offsets.get(tp)
            if state is None:
                state = self._offsets[tp] = PartitionOffsets(self._generation)
            state.fetched_many([r.offset for r in records])
            generation = state.generation
            out.extend([decode_record(record, generation) for record in records])
        return out

    async def consume(self) -> AsyncIterator[ConsumedMessage]:
        """Yield messages one by one, as the plan's consumer does, fetching in batches."""
        if not self._running:
            await self.start()
        while self._running:
            for message in await self.fetch_batch():
                yield message

    # ------------------------------------------------------------------ offsets

    def mark_finished(self, message: ConsumedMessage) -> bool:
        """Record that ``message`` reached a final state; True if it counted.

        A message from an assignment that has since been revoked does not count.
        """
        record = message.record
        state = self._offsets.get((record.topic, record.partition))  # type: ignore[call-overload]
        if state is None or state.generation != message.generation:
            return False
        state.finish(record.offset)
        self._finished_since_commit += 1
        return True

    async def commit(self, message: ConsumedMessage | None = None) -> None:
        """Mark ``message`` finished and commit if the policy says so.

        Without a message, commits everything finished now.
        """
        if message is None:
            await self.flush()
            return
        if not self.mark_finished(message):
            return
        policy = self.commit_policy
        if policy.per_message or self._finished_since_commit >= policy.every:
            await self.flush()

    def commit_due(self) -> bool:
        """True when finished offsets should be committed now under the policy."""
        finished = self._finished_since_commit
        if finished == 0:
            return False
        policy = self.commit_policy
        return (
            policy.per_message
            or finished >= policy.every
            or (time.monotonic() - self._last_commit) * 1000 >= policy.interval_ms
        )

    async def commit_if_due(self) -> None:
        """Commit finished offsets if the policy says it is time.

        A failed commit here (a rebalance in progress, a broker hiccup) is logged
        and counted, not raised: the offsets stay pending and the next commit,
        the one on revocation or the one on stop covers them.
        """
        if not self.commit_due():
            return
        try:
            await asyncio.wait_for(self.flush(), self.commit_timeout_s)
        except Exception as exc:
            self.commit_failures += 1
            logger.warning(
                "commit for group %s failed, will retry: %s: %s",
                self.group_id,
                type(exc).__name__,
                exc,
            )

    async def _maybe_commit(self) -> None:
        await self.commit_if_due()

    async def flush(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit every finished offset now (of ``partitions`` if given)."""
        if self._client is None:
            return
        async with self._commit_lock:
            offsets = {
                tp: position
                for tp, state in self._offsets.items()
                if (partitions is None or tp in partitions)
                and (position := state.pending_commit()) is not None
            }
            self._finished_since_commit = 0
            self._last_commit = time.monotonic()
            if not offsets:
                return
            await self._client.commit(offsets)
            for tp, position in offsets.items():
                state = self._offsets.get(tp)
                if state is not None:
                    state.committed = position
            self.commits += 1
            for listener in self._commit_listeners:
                listener(offsets)

    def committable_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the position a commit would record now."""
        positions = {tp: state.committable() for tp, state in self._offsets.items()}
        return {tp: pos for tp, pos in positions.items() if pos is not None}

    def in_flight(self) -> int:
        """Messages fetched and not yet final, over all partitions."""
        return sum(state.in_flight_count for state in self._offsets.values())

    def rewind_unfinished(self) -> dict[TopicPartition, int]:
        """Seek every partition back to its lowest unfinished offset and forget the rest.

        Used after a crash in the processing path: messages that were fetched but
        never finished are fetched again instead of being skipped.
        """
        if self._client is None:
            return {}
        self._generation += 1
        positions: dict[TopicPartition, int] = {}
        assigned = self._client.assignment()
        for tp, state in list(self._offsets.items()):
            position = state.committable()
            fresh = PartitionOffsets(self._generation, committed=state.committed)
            self._offsets[tp] = fresh
            if position is not None and tp in assigned:
                self._client.seek(tp, position)
                positions[tp] = position
        return positions

    # ------------------------------------------------------------------ flow control

    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned to this member."""
        return self._client.assignment() if self._client else set()

    def pause(self, *tps: TopicPartition) -> None:
        """Stop fetching from ``tps`` (all assigned partitions if none given)."""
        if self._client is not None:
            self._client.pause(*(tps or tuple(self._client.assignment())))

    def resume(self, *tps: TopicPartition) -> None:
        """Resume fetching from ``tps`` (all paused partitions if none given)."""
        if self._client is not None:
            self._client.resume(*(tps or tuple(self._client.paused())))

    def paused(self) -> set[TopicPartition]:
        """Partitions whose fetching is paused."""
        return self._client.paused() if self._client else set()

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: high watermark minus the fetch position."""
        if self._client is None:
            return {}
        result: dict[TopicPartition, int] = {}
        for tp in self._client.assignment():
            high = self._client.highwater(tp)
            state = self._offsets.get(tp)
            if high is None or state is None or state.next_position is None:
                continue
            result[tp] = max(0, high - state.next_position)
        return result

    @property
    def has_joined(self) -> bool:
        """True once the group handed this member an assignment (possibly empty)."""
        return self._joined

    async def wait_for_assignment(self, timeout_s: float) -> bool:
        """Wait until this member owns at least one partition; False on timeout."""
        try:
            await asyncio.wait_for(self._assigned_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ rebalance listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drain in-flight work of ``revoked``, commit what finished, drop their state."""
        if not revoked:
            return
        if self._revocation_hook is not None:
            await self._revocation_hook(revoked)
        try:
            await self.flush(revoked)
        except Exception:
            logger.exception("commit on revocation failed for %s", sorted(revoked))
        for tp in revoked:
            self._offsets.pop(tp, None)
        if not self.assignment() - revoked:
            self._assigned_event.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start fresh bookkeeping for newly assigned partitions (kept ones keep theirs)."""
        self._joined = True
        self._generation += 1
        for tp in assigned:
            if tp not in self._offsets:
                self._offsets[tp] = PartitionOffsets(self._generation)
        if assigned:
            self._assigned_event.set()
