"""Exactly-once: one Kafka transaction per input partition, holding its outputs and offsets.

A flow with ``processing_guarantee="exactly_once"`` gives each input partition it
owns a transactional producer whose id is fixed by the partition
(``<group>|<topic>|<partition>``). Starting that producer when the partition is
assigned fences the previous owner: its open transaction is aborted and its
later commits fail. aiokafka's ``TxnOffsetCommit`` carries no group generation
(KIP-447), so the transactional id is the fence; hence one id per partition.

While a handler of the partition runs, every send of the service's producers
(``MessageProducer``) goes into the partition's open transaction
(:func:`current_transaction`), and each record is kept with the offset of the
input message it belongs to. The checkpoint then commits the transaction with
the partition's next offset (:class:`PartitionTransaction`, which also undoes
failed attempts without running handlers again).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from core.config.settings import RedpandaSettings
from core.streaming.clients import (
    TransactionalProducerClient,
    create_admin,
    create_producer,
    create_transactional_producer,
)
from core.streaming.infrastructure.closing import bounded_close
from core.streaming.infrastructure.partition_transaction import PartitionTransaction
from core.streaming.types import TopicPartition

logger = logging.getLogger(__name__)


def transactional_id_for(group_id: str, tp: TopicPartition) -> str:
    """The transactional id of ``tp``'s producer in ``group_id`` (topics cannot hold ``|``)."""
    return f"{group_id}|{tp.topic}|{tp.partition}"


ProducerFactory = Callable[..., TransactionalProducerClient]


class PartitionTransactions:
    """The transactional producers of one flow, one per assigned input partition."""

    def __init__(
        self,
        config: RedpandaSettings,
        group_id: str,
        *,
        transaction_timeout_ms: int = 60_000,
        close_timeout_s: float = 10.0,
        max_request_size: int = 1_048_576,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.config = config
        self.group_id = group_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.close_timeout_s = close_timeout_s
        self.max_request_size = max_request_size
        self._factory = producer_factory or create_transactional_producer
        self._partitions: dict[TopicPartition, PartitionTransaction] = {}
        self.fenced_total = 0
        self.opened_total = 0
        self.last_error: str | None = None
        self._consumer: Any = None
        self._starting: set[TopicPartition] = set()
        self._retry: asyncio.Task[None] | None = None
        self._reclaims: set[asyncio.Task[None]] = set()
        #: Called when a partition's producer is found fenced.
        self.on_fenced: Callable[[], None] | None = None

    def set_consumer(self, consumer: Any) -> None:
        """The flow's ``MessageConsumer``: its partitions are fetched again from their
        committed offsets once their producers started."""
        self._consumer = consumer

    async def assign(self, partitions: set[TopicPartition]) -> None:
        """Take newly assigned partitions over: fence their previous owners, then have
        them fetched again from the committed offsets (stable once fenced).

        If a producer cannot start (broker away), the partitions stay unworked and
        are retried in the background with backoff.
        """
        self._starting |= set(partitions)
        try:
            await self.open(partitions)
        except Exception as exc:
            logger.error(
                "group %s: transactional producers not started (%s: %s); retrying",
                self.group_id,
                type(exc).__name__,
                exc,
            )
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._retry_assign(), name="txn-assign")
            return
        await self._restarted(set(partitions))

    async def _restarted(self, partitions: set[TopicPartition]) -> None:
        """Fetch ``partitions`` again from their committed offsets, stable now that their
        producers fenced the previous owners, and mark them ready in the same step."""
        consumer = self._consumer
        if consumer is not None and consumer.is_running:
            client = consumer.client
            owned = [tp for tp in partitions if tp in client.assignment()]
            found = {tp: await client.committed(tp) for tp in owned}
            consumer.restart_at(found)  # no await between this and the line below
        self._starting -= partitions

    async def _retry_assign(self) -> None:
        delay = 0.5
        while self._starting:
            await asyncio.sleep(delay)
            waiting = set(self._starting)
            try:
                await self.open(waiting)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(delay * 2, 10.0)
                continue
            await self._restarted(waiting)

    def get(self, tp: TopicPartition) -> PartitionTransaction | None:
        """The transaction of ``tp`` if this flow owns it and it is usable."""
        if tp in self._starting:
            return None  # fetched again from the commit first
        ptx = self._partitions.get(tp)
        return None if ptx is None or ptx.fenced is not None else ptx

    def is_fenced(self, tp: TopicPartition) -> bool:
        """True when ``tp``'s producer was fenced by a newer owner."""
        ptx = self._partitions.get(tp)
        return ptx is not None and ptx.fenced is not None

    def partitions(self) -> set[TopicPartition]:
        """Partitions with a transactional producer."""
        return set(self._partitions)

    def awaiting_commit(self, besides: PartitionTransaction | None = None) -> int:
        """Records sent into open transactions (other than ``besides``) and not yet committed."""
        return sum(p.kept for p in self._partitions.values() if p is not besides)

    async def open(self, partitions: Iterable[TopicPartition]) -> None:
        """Start the producers of newly owned partitions, fencing their previous owners.

        When this returns, every transaction the previous owners left open is
        aborted or committed, so the group's committed offsets are stable.
        """
        new = [tp for tp in partitions if tp not in self._partitions]
        if not new:
            return
        started = time.monotonic()
        producers = {tp: self._producer_for(tp) for tp in new}
        results = await asyncio.gather(
            *(p.start() for p in producers.values()), return_exceptions=True
        )
        failed: BaseException | None = None
        for (tp, producer), result in zip(producers.items(), results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
                await bounded_close(producer.stop(), self.close_timeout_s, f"producer of {tp}")
                continue
            self._partitions[tp] = PartitionTransaction(
                tp,
                producer,
                self.group_id,
                renew=self._renewer(tp),
                close_timeout_s=self.close_timeout_s,
            )
            self.opened_total += 1
        if failed is not None:
            self.last_error = f"{type(failed).__name__}: {failed}"
            raise failed
        logger.info(
            "group %s: transactional producers for %d partition(s) ready in %.0f ms",
            self.group_id,
            len(new),
            (time.monotonic() - started) * 1000,
        )

    async def fence(self, topics: Iterable[str]) -> int:
        """Finish what earlier owners of ``topics``' partitions left in flight.

        Starts (and stops) this group's transactional producer of every
        partition: a transaction a killed instance left open is aborted, one it
        was committing completes. A service that rebuilds state from its own
        outputs calls this before reading them, so that what it reads is final;
        a commit landing after the read would otherwise be missing from the
        rebuilt state while its inputs count as handled. Returns the number of
        partitions fenced.
        """
        admin = create_admin(self.config)
        await admin.start()
        try:
            present = await admin.list_topics()
        finally:
            await bounded_close(admin.close(), self.close_timeout_s, "topic listing")
        wanted = [topic for topic in dict.fromkeys(topics) if topic in present]
        if not wanted:
            return 0  # no input yet, so no earlier owner
        probe = create_producer(self.config)
        await probe.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in wanted
                for p in sorted(await probe.partitions_for(topic))
            ]
        finally:
            await bounded_close(probe.stop(), self.close_timeout_s, "partition probe")

        async def fence_one(tp: TopicPartition) -> None:
            producer = self._producer_for(tp)
            try:
                await producer.start()
            finally:
                await bounded_close(producer.stop(), self.close_timeout_s, f"fence of {tp}")

        await asyncio.gather(*(fence_one(tp) for tp in partitions))
        return len(partitions)

    def _producer_for(self, tp: TopicPartition) -> TransactionalProducerClient:
        return self._factory(
            self.config,
            transactional_id_for(self.group_id, tp),
            client_id=f"{self.config.client_id}-txn-{tp.topic}-{tp.partition}",
            max_request_size=self.max_request_size,
            transaction_timeout_ms=self.transaction_timeout_ms,
        )

    def _renewer(self, tp: TopicPartition) -> Callable[[], Awaitable[TransactionalProducerClient]]:
        async def renew() -> TransactionalProducerClient:
            producer = self._producer_for(tp)
            await producer.start()
            return producer

        return renew

    async def close(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Abort and stop the producers of ``partitions`` (all if None)."""
        chosen = list(self._partitions) if partitions is None else list(partitions)
        self._starting -= set(chosen) if partitions is not None else self._starting
        if partitions is None:
            if self._retry is not None:
                self._retry.cancel()
            for task in self._reclaims:
                task.cancel()
        closing = [self._partitions.pop(tp) for tp in chosen if tp in self._partitions]
        await asyncio.gather(*(p.close(self.close_timeout_s) for p in closing))

    def note_fenced(self, ptx: PartitionTransaction) -> None:
        """Count and log a fenced partition (the zombie stops working on it).

        Normally the group takes the partition away soon after. If it is still this
        member's after twice the session timeout, the fencing came from the broker
        aborting a transaction open past ``transaction_timeout_ms``, not from a new
        owner: the partition gets a new producer and is fetched again from its commit.
        """
        if ptx.reported:
            return
        ptx.reported = True
        if self.on_fenced is not None:
            self.on_fenced()
        task = asyncio.create_task(self._reclaim(ptx), name=f"reclaim-{ptx.transactional_id}")
        self._reclaims.add(task)
        task.add_done_callback(self._reclaims.discard)
        self.fenced_total += 1
        self.last_error = f"ProducerFencedError: {ptx.fenced}"
        logger.warning(
            "group %s: %s[%d]: producer %s was fenced (a newer owner took the partition "
            "over, or a transaction outlived transaction_timeout_ms); this member stops "
            "working on it and commits nothing more for it",
            self.group_id,
            ptx.tp.topic,
            ptx.tp.partition,
            ptx.transactional_id,
        )

    async def _reclaim(self, ptx: PartitionTransaction) -> None:
        await asyncio.sleep(2 * self.config.session_timeout_ms / 1000)
        tp = ptx.tp
        consumer = self._consumer
        owned = consumer is not None and consumer.is_running and tp in consumer.assignment()
        if self._partitions.get(tp) is not ptx or not owned:
            return  # revoked meanwhile: the new owner has it
        logger.warning(
            "group %s: %s[%d] is still assigned here after its producer was fenced "
            "(a transaction outlived transaction_timeout_ms); starting a new producer",
            self.group_id,
            tp.topic,
            tp.partition,
        )
        del self._partitions[tp]
        await ptx.close(self.close_timeout_s)
        await self.assign({tp})

    def health(self) -> dict[str, Any]:
        """Producers, open records and fencing, for health reports."""
        return {
            "partitions": len(self._partitions),
            "starting": len(self._starting),
            "fenced": sorted(
                f"{tp.topic}[{tp.partition}]"
                for tp in self._partitions
                if self._partitions[tp].fenced is not None
            ),
            "records_awaiting_commit": sum(p.kept for p in self._partitions.values()),
            "aborts": sum(p.aborts for p in self._partitions.values()),
            "fenced_total": self.fenced_total,
            "last_error": self.last_error,
        }


# --------------------------------------------------------------------------- routing

_routed: contextvars.ContextVar[PartitionTransaction | None] = contextvars.ContextVar(
    "tradestream_transaction", default=None
)


def current_transaction() -> PartitionTransaction | None:
    """The transaction the current task's sends go into, if any."""
    return _routed.get()


def route_to(ptx: PartitionTransaction | None) -> contextvars.Token[PartitionTransaction | None]:
    """Send the current task's records into ``ptx``; undo with :func:`stop_routing`."""
    return _routed.set(ptx)


def stop_routing(token: contextvars.Token[PartitionTransaction | None]) -> None:
    """Undo :func:`route_to`."""
    _routed.reset(token)
