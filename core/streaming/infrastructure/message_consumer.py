"""Pure message consumption: fetch in batches, decode, track which offsets are final.

The consumer never runs business logic and, inside a flow, never decides when
to commit: the flow's checkpoint does, through :meth:`MessageConsumer.commit_offsets`.
Offsets are committed per partition as *highest contiguous finished offset + 1*.
The plan's ``consume()``/``commit(message)`` pair stays for using the consumer
on its own; there ``commit`` follows the :class:`CommitPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerClient, ConsumerOptions, create_consumer
from core.streaming.errors import ClientClosedError
from core.streaming.infrastructure.closing import bounded_close
from core.streaming.infrastructure.consumed_message import ConsumedMessage, decode_records
from core.streaming.infrastructure.offset_tracker import CommitPolicy, PartitionOffsets
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)

RevocationHook = Callable[[set[TopicPartition]], Awaitable[None]]
AssignmentHook = Callable[[set[TopicPartition]], Awaitable[None]]
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
        options: ConsumerOptions | None = None,
    ) -> None:
        self.config = config
        self.topics = list(topics)
        self.group_id = group_id
        self.commit_policy = commit_policy or CommitPolicy()
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.fetch_timeout_ms = fetch_timeout_ms
        self.commit_timeout_s = commit_timeout_s
        self.options = options or ConsumerOptions()
        self._client_factory = client_factory or create_consumer
        self._client: ConsumerClient | None = None
        self._running = False
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._group_generations: dict[TopicPartition, int] = {}
        self._epoch = 0
        self._finished_since_commit = 0
        self._last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._revocation_hook: RevocationHook | None = None
        self._assignment_hook: AssignmentHook | None = None
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
        client = self._client_factory(
            self.config,
            self.topics,
            self.group_id,
            replace(
                self.options,
                auto_offset_reset=self.auto_offset_reset,
                max_poll_records=self.max_poll_records,
            ),
            listener=self,
        )
        await client.start()
        self._client = client
        self._running = True
        logger.info("consumer started topics=%s group=%s", self.topics, self.group_id)

    async def stop(self) -> None:
        """Leave the group (commit first through the flow's checkpoint). Idempotent."""
        if not self._running or self._client is None:
            return
        self._running = False
        client, self._client = self._client, None
        self._offsets.clear()
        self._joined = False
        self._assigned_event.clear()
        await bounded_close(client.stop(), self.commit_timeout_s, f"consumer of {self.group_id}")
        logger.info("consumer stopped topics=%s group=%s", self.topics, self.group_id)

    def set_revocation_hook(self, hook: RevocationHook | None) -> None:
        """Awaited on revocation, before the revoked partitions' state is dropped."""
        self._revocation_hook = hook

    def set_assignment_hook(self, hook: AssignmentHook | None) -> None:
        """Awaited after newly assigned partitions got their bookkeeping."""
        self._assignment_hook = hook

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called with the offsets after every successful commit."""
        self._commit_listeners.append(listener)

    # ------------------------------------------------------------------ fetching

    async def fetch_batch(
        self, timeout_ms: int | None = None, max_records: int | None = None
    ) -> list[ConsumedMessage]:
        """Fetch the next batch (possibly empty), decoded, in partition order."""
        out: list[ConsumedMessage] = []
        for _, messages in await self.fetch_partitioned(timeout_ms, max_records):
            out.extend(messages)
        return out

    async def fetch_partitioned(
        self, timeout_ms: int | None = None, max_records: int | None = None
    ) -> list[tuple[TopicPartition, list[ConsumedMessage]]]:
        """Fetch the next batch, decoded, as one list of messages per partition."""
        client = self.client
        limit = self.max_poll_records if max_records is None else max(1, max_records)
        batches = await client.getmany(
            timeout_ms=self.fetch_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=min(limit, self.max_poll_records),
        )
        out: list[tuple[TopicPartition, list[ConsumedMessage]]] = []
        for tp, records in batches.items():
            if not records:
                continue
            state = self._offsets.get(tp)
            if state is None:
                state = self._offsets[tp] = PartitionOffsets(self._epoch)
            if state.committed is None and state.next_position is None:
                state.committed = records[0].offset  # where the group's last commit left us
            state.fetched_many([r.offset for r in records])
            out.append((tp, decode_records(records, state.generation)))
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
        state = self._offsets.get(TopicPartition(record.topic, record.partition))
        if state is None or state.generation != message.generation:
            return False
        state.finish(record.offset)
        self._finished_since_commit += 1
        return True

    def finish_many(self, messages: Sequence[ConsumedMessage]) -> None:
        """:meth:`mark_finished` for many messages (one lookup per partition run)."""
        offsets = self._offsets
        key: tuple[int, str, int] | None = None
        state: PartitionOffsets | None = None
        run: list[int] = []
        for message in messages:
            record = message.record
            if key is None or (
                key[0] != record.partition or key[1] != record.topic or key[2] != message.generation
            ):
                if state is not None and run:
                    state.finish_run(run)
                run = []
                key = (record.partition, record.topic, message.generation)
                state = offsets.get(TopicPartition(record.topic, record.partition))
                if state is not None and state.generation != message.generation:
                    state = None
            run.append(record.offset)
        if state is not None and run:
            state.finish_run(run)
        self._finished_since_commit += len(messages)

    def finish_offsets(self, tp: TopicPartition, generation: int, offsets: list[int]) -> None:
        """:meth:`mark_finished` for offsets of ``tp`` fetched in group ``generation``, in order."""
        state = self._offsets.get(tp)
        if state is not None and state.generation == generation and offsets:
            state.finish_run(offsets)
        self._finished_since_commit += len(offsets)

    def pending_offsets(
        self, partitions: set[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """Per partition, the position a commit would record now, where it moved."""
        return {
            tp: position
            for tp, state in self._offsets.items()
            if (partitions is None or tp in partitions)
            and (position := state.pending_commit()) is not None
        }

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` now (the checkpoint's last step); raises if refused."""
        if self._client is None or not offsets:
            return
        async with self._commit_lock:
            await self._client.commit(offsets)
            self.record_committed(offsets)

    def record_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Note offsets committed (by ``commit_offsets`` or inside a transaction)."""
        for tp, position in offsets.items():
            state = self._offsets.get(tp)
            if state is not None:
                state.committed = position
        self.commits += 1
        self._finished_since_commit = 0
        self._last_commit = time.monotonic()
        for listener in self._commit_listeners:
            listener(dict(offsets))

    async def commit(self, message: ConsumedMessage | None = None) -> None:
        """Standalone use: mark ``message`` finished and commit when the policy says so.

        Without a message, commits everything finished now. Flows commit through
        their checkpoint instead.
        """
        if message is not None:
            if not self.mark_finished(message):
                return
            policy = self.commit_policy
            due = (
                policy.per_message
                or self._finished_since_commit >= policy.every
                or (time.monotonic() - self._last_commit) * 1000 >= policy.interval_ms
            )
            if not due:
                return
        await self.flush()

    async def flush(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit every finished offset now (of ``partitions`` if given)."""
        await self.commit_offsets(self.pending_offsets(partitions))

    def committable_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the position a commit may record now."""
        positions = {tp: state.committable() for tp, state in self._offsets.items()}
        return {tp: pos for tp, pos in positions.items() if pos is not None}

    def committed_offset(self, tp: TopicPartition) -> int | None:
        """The last position this member committed for ``tp``, if any."""
        state = self._offsets.get(tp)
        return state.committed if state is not None else None

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
        self._epoch += 1
        positions: dict[TopicPartition, int] = {}
        assigned = self._client.assignment()
        for tp, state in list(self._offsets.items()):
            position = state.committable()
            self._offsets[tp] = PartitionOffsets(self._epoch, committed=state.committed)
            if position is not None and tp in assigned:
                self._client.seek(tp, position)
                positions[tp] = position
        return positions

    def generation_now(self, tp: TopicPartition) -> int | None:
        """The bookkeeping generation of ``tp``'s current messages (None: not ours)."""
        state = self._offsets.get(tp)
        return None if state is None else state.generation

    def restart_at(self, offsets: Mapping[TopicPartition, int | None]) -> None:
        """Fetch assigned partitions again from ``offsets`` (None: where their assignment
        began), forgetting what was fetched of them (their old messages become stale)."""
        client = self._client
        if client is None:
            return
        self._epoch += 1
        assigned = client.assignment()
        for tp, offset in offsets.items():
            old = self._offsets.get(tp)
            if offset is None and old is not None:
                offset = old.committed  # where this assignment started fetching
            if tp in assigned:
                if offset is not None:
                    client.seek(tp, offset)
                self._offsets[tp] = PartitionOffsets(self._epoch, committed=offset)

    def group_generation_of(self, tp: TopicPartition) -> int:
        """The group generation in which this member was given ``tp`` (-1 if unknown)."""
        return self._group_generations.get(tp, -1)

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

    def lag(self) -> dict[TopicPartition, tuple[int, int | None]]:
        """Per assigned partition: (high watermark - fetch position, high watermark - committed).

        The committed lag counts what a restart would deliver again; it is
        ``None`` until this member has committed or learned a committed offset.
        """
        if self._client is None:
            return {}
        result: dict[TopicPartition, tuple[int, int | None]] = {}
        for tp in self._client.assignment():
            high = self._client.highwater(tp)
            state = self._offsets.get(tp)
            if high is None or state is None or state.next_position is None:
                continue
            committed = state.committed
            result[tp] = (
                max(0, high - state.next_position),
                None if committed is None else max(0, high - committed),
            )
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
        """Let the flow finish and commit ``revoked``, then drop their state, whatever happens.

        Without a flow (no revocation hook) the finished offsets are committed here.
        """
        if not revoked:
            return
        try:
            if self._revocation_hook is not None:
                await self._revocation_hook(revoked)
            else:  # used on its own: commit what finished, as a flow's checkpoint would
                await asyncio.wait_for(self.flush(revoked), self.commit_timeout_s)
        except Exception:
            logger.exception(
                "revocation of %s in group %s failed; their uncommitted messages will be "
                "delivered again to the next owner",
                sorted(revoked),
                self.group_id,
            )
        finally:
            for tp in revoked:
                self._offsets.pop(tp, None)
                self._group_generations.pop(tp, None)
            if not self.assignment() - revoked:
                self._assigned_event.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start fresh bookkeeping for newly assigned partitions (kept ones keep theirs)."""
        self._joined = True
        self._epoch += 1
        generation = self._client.generation if self._client is not None else -1
        for tp in assigned:
            if tp not in self._offsets:
                self._offsets[tp] = PartitionOffsets(self._epoch)
            self._group_generations[tp] = generation
        if assigned and self._assignment_hook is not None:
            await self._assignment_hook(assigned)
        if assigned:
            self._assigned_event.set()
