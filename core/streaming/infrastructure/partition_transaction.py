"""The open transaction of one input partition and the records it must contain.

Records a handler sends while its partition's transaction is open are kept with
the offset of the input message they belong to, until the transaction commits.
That makes failures cheap to undo without running handlers again: a failed
attempt's records are voided (:meth:`PartitionTransaction.void`), and whenever
the open transaction holds anything but the records to commit (voided records,
records of messages past the committed offset, a refused record), it is aborted
and the records that belong in it are sent again into a new one before it
commits (:meth:`PartitionTransaction.commit`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from core.streaming.clients import TransactionalProducerClient
from core.streaming.errors import ProducerFencedError, TransactionError
from core.streaming.infrastructure.closing import bounded_close
from core.streaming.infrastructure.consumed_message import current_message
from core.streaming.types import Headers, RecordMetadata, TopicPartition

logger = logging.getLogger(__name__)

#: Attempts at committing one partition's transaction within one checkpoint.
COMMIT_ATTEMPTS = 3


@dataclass(slots=True, eq=False)
class _Sent:
    """A record sent into a partition's transaction, kept until it commits."""

    owner: int | None  # offset of the input message it belongs to
    topic: str
    value: bytes | None
    key: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    partition: int | None
    ack: Awaitable[RecordMetadata] | None = None


class PartitionTransaction:
    """The open transaction of one input partition and the records it must contain.

    Callers hold :attr:`lock` while they run the partition's handlers or commit,
    so a commit never sees a handler halfway through.
    """

    def __init__(
        self, tp: TopicPartition, producer: TransactionalProducerClient, group_id: str
    ) -> None:
        self.tp = tp
        self.producer = producer
        self.group_id = group_id
        self.lock = asyncio.Lock()
        self._kept: list[_Sent] = []
        self._open = False
        self._stray = 0  # records in the open transaction that are not kept
        self._replay = False  # kept records are not in the open transaction
        self.broken: BaseException | None = None
        self.fenced: ProducerFencedError | None = None
        self.commits = 0
        self.aborts = 0
        self.reported = False  # fencing counted and logged

    @property
    def transactional_id(self) -> str:
        """The producer's transactional id."""
        return self.producer.transactional_id

    @property
    def kept(self) -> int:
        """Records waiting for their transaction to commit."""
        return len(self._kept)

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Send one record into the open transaction, for the message being handled."""
        self._check_fenced()
        await self._ensure_open()
        message = current_message()
        owner = (
            message.offset if message is not None and message.topic_partition == self.tp else None
        )
        record = _Sent(owner, topic, value, key, tuple(headers or ()), partition)
        ack = await self._send(record)
        self._kept.append(record)
        return ack

    async def _send(self, record: _Sent) -> Awaitable[RecordMetadata]:
        """Hand ``record`` to the producer; its acknowledgement becomes ``record.ack``."""
        try:
            ack = await self.producer.send(
                record.topic,
                record.value,
                key=record.key,
                headers=record.headers,
                partition=record.partition,
            )
        except ProducerFencedError as exc:
            self.fenced = exc
            raise
        record.ack = ack
        if isinstance(ack, asyncio.Future):
            ack.add_done_callback(lambda done: self._acked(record, done))
        return ack

    def _acked(self, record: _Sent, ack: asyncio.Future[RecordMetadata]) -> None:
        if ack.cancelled() or record.ack is not ack:
            return
        error = ack.exception()
        if error is None:
            return
        if isinstance(error, ProducerFencedError):
            self.fenced = error
        # A refused record breaks the transaction: it is aborted before anything
        # else goes in, and the refused record is not sent again.
        self.broken = error
        if record in self._kept:
            self._kept.remove(record)
            self._stray += 1

    def void(self, offset: int) -> int:
        """Drop the records of the message at ``offset`` (an attempt that failed)."""
        before = len(self._kept)
        self._kept = [r for r in self._kept if r.owner != offset]
        dropped = before - len(self._kept)
        if dropped and self._open and not self._replay:
            self._stray += dropped
        return dropped

    # ------------------------------------------------------------------ transaction state

    def _check_fenced(self) -> None:
        if self.fenced is not None:
            raise ProducerFencedError(
                f"partition {self.tp.topic}[{self.tp.partition}] belongs to a newer producer "
                f"({self.transactional_id!r} was fenced)"
            ) from self.fenced

    async def _ensure_open(self) -> None:
        """A transaction that holds exactly the kept records, ready for more."""
        if self.broken is not None or self._replay:
            await self._restart(self._kept)
        elif not self._open:
            await self._begin()

    async def _begin(self) -> None:
        try:
            await self.producer.begin_transaction()
        except ProducerFencedError as exc:
            self.fenced = exc
            raise
        self._open = True
        self._stray = 0
        self._replay = False

    async def _abort(self) -> None:
        if not self._open:
            return
        self._open = False
        self.aborts += 1
        try:
            await self.producer.abort_transaction()
        except ProducerFencedError as exc:
            self.fenced = exc
            raise

    async def _restart(self, records: list[_Sent]) -> None:
        """Abort what is open and send ``records`` again into a new transaction."""
        await self._abort()
        self.broken = None
        await self._begin()
        kept = list(records)
        self._kept = [r for r in self._kept if r not in kept]
        for record in kept:
            await self._send(record)
            self._kept.append(record)
        self._replay = bool(self._kept) and len(self._kept) != len(kept)

    # ------------------------------------------------------------------ commit

    async def commit(self, position: int | None) -> bool:
        """Commit the records of messages before ``position`` with ``position`` as the
        partition's committed offset (``None``: the offset did not move).

        Records of later messages stay kept and go into the next transaction.
        Returns False when there was nothing to commit. Raises
        ``ProducerFencedError`` when a newer owner fenced this producer and
        ``TransactionError`` when the commit failed ``COMMIT_ATTEMPTS`` times.
        """
        self._check_fenced()
        mine = [
            r
            for r in self._kept
            if r.owner is None or (position is not None and r.owner < position)
        ]
        later = [r for r in self._kept if r not in mine]
        if position is None and not mine:
            if self._open and self._stray and not self._kept:
                await self._abort()  # only voided records: nothing to keep
            return False
        last: BaseException | None = None
        for _ in range(COMMIT_ATTEMPTS):
            try:
                if self.broken is not None or self._stray or self._replay or later:
                    await self._restart(mine)
                    self._replay = bool(later)
                elif not self._open:
                    await self._begin()
                await _all_acked([r.ack for r in mine])
                if position is not None:
                    await self.producer.send_offsets_to_transaction(
                        {self.tp: position}, self.group_id
                    )
                await self.producer.commit_transaction()
            except ProducerFencedError as exc:
                self.fenced = exc
                self._open = False
                raise
            except Exception as exc:
                last = exc
                self.broken = exc
                logger.warning(
                    "transaction of %s failed (%s: %s); aborting and sending its records again",
                    self.transactional_id,
                    type(exc).__name__,
                    exc,
                )
                continue
            self._open = False
            self.commits += 1
            self._kept = later
            self._replay = bool(later)
            self._stray = 0
            return True
        raise TransactionError(
            f"transaction of {self.transactional_id!r} failed {COMMIT_ATTEMPTS} times"
        ) from last

    async def close(self, timeout_s: float) -> None:
        """Abort what is open (nothing of it commits) and stop the producer."""
        self._kept.clear()
        if self._open and self.fenced is None:
            try:
                await asyncio.wait_for(self._abort(), timeout_s)
            except Exception as exc:  # the next owner's producer aborts it anyway
                logger.info("abort of %s at close failed: %s", self.transactional_id, exc)
        await bounded_close(self.producer.stop(), timeout_s, f"producer {self.transactional_id}")


async def _all_acked(acks: list[Awaitable[RecordMetadata] | None]) -> None:
    waiting = [a for a in acks if a is not None]
    if not waiting:
        return
    results = await asyncio.gather(*(asyncio.shield(a) for a in waiting), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise TransactionError(f"a record of the transaction was refused: {failure!r}") from failure
