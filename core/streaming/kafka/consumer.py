"""``ConsumerClient`` over ``AIOKafkaConsumer``: explicit commits, our types and errors.

A fetched record that aiokafka cannot decode is handed out as an
``UnreadableRecord`` at its offset (see ``core.streaming.kafka.records``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, NoOffsetForPartitionError
from aiokafka.errors import OffsetOutOfRangeError as KafkaOffsetOutOfRangeError

from core.config.settings import RedpandaSettings
from core.streaming.broker_api import NO_GENERATION, ConsumerOptions, RebalanceListener
from core.streaming.errors import (
    ClientClosedError,
    CommitError,
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)
from core.streaming.kafka import records
from core.streaming.kafka.connection import connection_kwargs, to_kafka
from core.streaming.types import FetchedRecord, TopicPartition
from core.topic_names import validate_topic_name

#: Extra time a JoinGroup request may take beyond the rebalance timeout (as Kafka's
#: Java client allows): the broker holds the request until the rebalance completes.
JOIN_GRACE_MS = 5_000

# A record aiokafka cannot decode becomes an UnreadableRecord instead of an error.
records.install()


class _ListenerBridge(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        await self._listener.on_partitions_revoked({TopicPartition(*tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        await self._listener.on_partitions_assigned({TopicPartition(*tp) for tp in assigned})


class KafkaConsumerClient:
    """``ConsumerClient`` over ``AIOKafkaConsumer`` with auto-commit off."""

    def __init__(
        self,
        config: RedpandaSettings,
        topics: Sequence[str],
        group_id: str,
        options: ConsumerOptions | None = None,
        *,
        listener: RebalanceListener | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a sequence of topic names, not one string")
        opts = (options or ConsumerOptions()).resolve(config)
        assert opts.rebalance_timeout_ms is not None
        self._topics = [validate_topic_name(t) for t in topics]
        self._listener = listener
        self._consumer = AIOKafkaConsumer(
            client_id=opts.client_id or f"{config.client_id}-consumer",
            group_id=group_id,
            auto_offset_reset=opts.auto_offset_reset,
            enable_auto_commit=False,
            max_poll_records=opts.max_poll_records,
            session_timeout_ms=opts.session_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            max_poll_interval_ms=opts.max_poll_interval_ms,
            rebalance_timeout_ms=opts.rebalance_timeout_ms,
            isolation_level=opts.isolation_level,
            # aiokafka bounds a JoinGroup by the request timeout, and the broker may
            # hold it for the whole rebalance timeout.
            request_timeout_ms=max(
                config.request_timeout_ms, opts.rebalance_timeout_ms + JOIN_GRACE_MS
            ),
            # aiokafka fetches from one broker at a time: a long wait on a caught-up
            # partition holds up partitions that have data.
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            **connection_kwargs(config),
        )
        self.options = opts
        self._started = False
        self._stopped = False

    def _check(self) -> None:
        if self._stopped:
            raise ClientClosedError("consumer is stopped")
        if not self._started:
            raise ClientClosedError("consumer is not started")

    @property
    def generation(self) -> int:
        """The group generation of the current assignment; -1 before the first one."""
        if not self._started or self._stopped:
            return NO_GENERATION
        return int(self._consumer._coordinator.generation)

    @property
    def member_id(self) -> str | None:
        """This member's id in the group, or None before it joined."""
        if not self._started or self._stopped:
            return None
        return self._consumer._coordinator.member_id or None

    async def start(self) -> None:
        if self._stopped:
            raise ClientClosedError("a stopped consumer cannot be restarted")
        if self._started:
            return
        # The fetcher task starts here and keeps this context: it parses tolerantly.
        with records.tolerant_fetching():
            await self._consumer.start()
        listener = _ListenerBridge(self._listener) if self._listener else None
        self._consumer.subscribe(self._topics, listener=listener)
        self._started = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            await self._consumer.stop()

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FetchedRecord]]:
        self._check()
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except (NoOffsetForPartitionError, KafkaOffsetOutOfRangeError) as exc:
            raise OffsetOutOfRangeError(
                f"{exc}: no valid position (no committed offset, or one outside the log) "
                f"and auto_offset_reset is {self.options.auto_offset_reset!r}"
            ) from exc
        # aiokafka's records already have the FetchedRecord attributes: no copy per record.
        return {TopicPartition(ktp.topic, ktp.partition): recs for ktp, recs in batches.items()}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check()
        if not offsets:
            return
        await self._check_commit_range(offsets)
        try:
            await self._consumer.commit({to_kafka(tp): off for tp, off in offsets.items()})
        except (CommitFailedError, IllegalStateError, KafkaOffsetOutOfRangeError) as exc:
            raise CommitError(f"commit of {dict(offsets)} refused: {exc}") from exc

    async def _check_commit_range(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Refuse what Kafka would store silently: negative or beyond the high watermark."""
        unknown: list[TopicPartition] = []
        for tp, offset in offsets.items():
            if offset < 0:
                raise CommitError(f"commit of offset {offset} for {tp} is negative")
            known = self._consumer.highwater(to_kafka(tp)) if tp in self.assignment() else None
            if known is None or offset > known:
                unknown.append(tp)
        if unknown:
            try:
                ends = await self.end_offsets(unknown)
            except UnknownTopicOrPartitionError as exc:
                raise CommitError(f"commit of {dict(offsets)} refused: {exc}") from exc
            for tp in unknown:
                if offsets[tp] > ends.get(tp, 0):
                    raise CommitError(
                        f"commit of offset {offsets[tp]} for {tp} is beyond the high watermark "
                        f"{ends.get(tp, 0)}"
                    )

    def _owned(self, tps: Iterable[TopicPartition]) -> None:
        missing = set(tps) - self.assignment()
        if missing:
            raise PartitionNotAssignedError(
                f"partitions {sorted(missing)} are not assigned to this consumer"
            )

    async def committed(self, tp: TopicPartition) -> int | None:
        self._check()
        value = await self._consumer.committed(to_kafka(tp))
        return int(value) if value is not None else None

    def assignment(self) -> set[TopicPartition]:
        if not self._started or self._stopped:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, *tps: TopicPartition) -> None:
        self._check()
        self._owned(tps)
        self._consumer.pause(*(to_kafka(tp) for tp in tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._check()
        self._owned(tps)
        self._consumer.resume(*(to_kafka(tp) for tp in tps))

    def paused(self) -> set[TopicPartition]:
        if not self._started or self._stopped:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def highwater(self, tp: TopicPartition) -> int | None:
        self._check()
        self._owned([tp])
        value = self._consumer.highwater(to_kafka(tp))
        return int(value) if value is not None else None

    async def position(self, tp: TopicPartition) -> int:
        self._check()
        self._owned([tp])
        if self.options.auto_offset_reset == "none" and await self.committed(tp) is None:
            # aiokafka would wait for a position that never comes.
            raise OffsetOutOfRangeError(
                f"no committed offset for {tp} and auto_offset_reset is 'none'"
            )
        return int(await self._consumer.position(to_kafka(tp)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check()
        self._owned([tp])
        self._consumer.seek(to_kafka(tp), offset)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks; ``UnknownTopicOrPartitionError`` if one of ``tps`` does not exist.

        aiokafka would retry a missing partition until its request timeout, or
        create a missing topic (with auto-creation on) and report 0.
        """
        self._check()
        wanted = list(tps)
        await self._require_existing(wanted)
        result = await self._consumer.end_offsets([to_kafka(tp) for tp in wanted])
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in result.items()}

    async def _require_existing(self, tps: list[TopicPartition]) -> None:
        cached = self._consumer.partitions_for_topic
        if all(tp.partition in (cached(tp.topic) or ()) for tp in tps):
            return
        cluster = await self._consumer._client.fetch_all_metadata()
        missing = [
            tp for tp in tps if tp.partition not in (cluster.partitions_for_topic(tp.topic) or ())
        ]
        if missing:
            raise UnknownTopicOrPartitionError(f"partitions {sorted(missing)} do not exist")
