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
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.streaming.clients import TransactionalProducerClient
from core.streaming.errors import ProducerFencedError, TransactionError, TransactionStateError
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
    #: Sent again by this object: a failure of ``ack`` is ours to repair, not the sender's.
    replayed: bool = False


class PartitionTransaction:
    """The open transaction of one input partition and the records it must contain.

    Callers hold :attr:`lock` while they run the partition's handlers or commit,
    so a commit never sees a handler halfway through.
    """

    def __init__(
        self,
        tp: TopicPartition,
        producer: TransactionalProducerClient,
        group_id: str,
        *,
        renew: Callable[[], Awaitable[TransactionalProducerClient]] | None = None,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.tp = tp
        self.producer = producer
        self.group_id = group_id
        self._renew_producer = renew
        self._close_timeout_s = close_timeout_s
        self._closing: set[asyncio.Task[None]] = set()
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
        if self.fenced is not None:
            self._check_fenced()
        if not self._open or self._replay or self.broken is not None:
            await self._ensure_open()
        message = current_message()
        owner = None
        if message is not None:
            source, tp = message.record, self.tp
            if source.partition == tp.partition and source.topic == tp.topic:
                owner = source.offset
        record = _Sent(owner, topic, value, key, tuple(headers or ()), partition)
        try:
            ack = await self._send(record)
        except TransactionStateError as exc:
            # A refused record left the transaction abortable: abort, send the kept
            # records again, then this one.
            self.broken = exc
            await self._ensure_open()
            ack = await self._send(record)
        self._kept.append(record)
        return ack

    async def _send(self, record: _Sent) -> Awaitable[RecordMetadata]:
        """Hand ``record`` to the producer; its acknowledgement becomes ``record.ack``."""
        producer = self.producer
        try:
            ack = await producer.send(
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
            ack.add_done_callback(functools.partial(self._acked, producer))
        return ack

    def _acked(self, producer: Any, ack: asyncio.Future[RecordMetadata]) -> None:
        """A refused record leaves the producer unusable for the rest of the transaction.

        Failures of a producer already replaced (or of a transaction already
        aborted by us) are not news.
        """
        if producer is not self.producer or ack.cancelled() or ack.exception() is None:
            return
        error = ack.exception()
        if isinstance(error, ProducerFencedError):
            self.fenced = error
        self.broken = error

    def refused(self, offset: int, error: BaseException) -> None:
        """A record of the message at ``offset`` was refused after its handler returned:
        its records leave, and the transaction is rebuilt before anything else goes in."""
        self.void(offset)
        self.broken = error

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

    async def _renew(self) -> None:
        assert self._renew_producer is not None
        old = self.producer
        self._open = False
        self.aborts += 1
        try:
            self.producer = await self._renew_producer()
        except ProducerFencedError as exc:
            self.fenced = exc
            raise
        closing = asyncio.create_task(
            bounded_close(old.stop(), self._close_timeout_s, f"old producer {old.transactional_id}")
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

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
        """Abort what is open and send ``records`` again into a new transaction.

        First every pending acknowledgement is awaited. A record whose first send
        failed is dropped: its sender saw the failure (a handler failed, an output
        failure sent its message back to the error path, a dead-letter write was
        tried again). Records sent again by this object are sent again once more.
        """
        pending = [
            r.ack
            for r in self._kept
            if r.ack is not None and not (isinstance(r.ack, asyncio.Future) and r.ack.done())
        ]
        if pending:
            await asyncio.gather(*(asyncio.shield(a) for a in pending), return_exceptions=True)
        dropped = {id(r) for r in self._kept if not r.replayed and _failed(r)}
        if dropped:
            self._kept = [r for r in self._kept if id(r) not in dropped]
            records = [r for r in records if id(r) not in dropped]
        if self.broken is not None and self._renew_producer is not None:
            # A refused record leaves the producer's sequence numbers behind the broker's
            # (every later send fails): a new producer of the same id starts afresh, and
            # starting it aborts what the old one left open.
            await self._renew()
        else:
            await self._abort()
        self.broken = None
        await self._begin()
        kept = list(records)
        resending = set(map(id, kept))
        self._kept = [r for r in self._kept if id(r) not in resending]
        for record in kept:
            record.replayed = True
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
        mine, later = self._split(position)
        if position is None and not mine:
            if self._open and self._stray and not self._kept:
                await self._abort()  # only voided records: nothing to keep
            return False
        last: BaseException | None = None
        for _ in range(COMMIT_ATTEMPTS):
            try:
                if self.broken is not None or self._stray or self._replay or later:
                    await self._restart(mine)  # the open transaction: exactly ``mine``
                    mine, later = self._split(position)
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

    def _split(self, position: int | None) -> tuple[list[_Sent], list[_Sent]]:
        """Kept records of messages before ``position``, and of the others."""
        mine: list[_Sent] = []
        later: list[_Sent] = []
        for record in self._kept:
            owner = record.owner
            if owner is None or (position is not None and owner < position):
                mine.append(record)
            else:
                later.append(record)
        return mine, later

    async def close(self, timeout_s: float) -> None:
        """Abort what is open (nothing of it commits) and stop the producer."""
        self._kept.clear()
        if self._open and self.fenced is None:
            try:
                await asyncio.wait_for(self._abort(), timeout_s)
            except Exception as exc:  # the next owner's producer aborts it anyway
                logger.info("abort of %s at close failed: %s", self.transactional_id, exc)
        await bounded_close(self.producer.stop(), timeout_s, f"producer {self.transactional_id}")


def _failed(record: _Sent) -> bool:
    ack = record.ack
    return (
        isinstance(ack, asyncio.Future)
        and ack.done()
        and not ack.cancelled()
        and ack.exception() is not None
    )


async def _all_acked(acks: list[Awaitable[RecordMetadata] | None]) -> None:
    """Raise ``TransactionError`` if one of ``acks`` failed; wait only for pending ones."""
    pending: list[Awaitable[RecordMetadata]] = []
    for ack in acks:
        if isinstance(ack, asyncio.Future) and ack.done():
            if not ack.cancelled() and ack.exception() is not None:
                raise TransactionError(
                    f"a record of the transaction was refused: {ack.exception()!r}"
                ) from ack.exception()
        elif ack is not None:
            pending.append(ack)
    if not pending:
        return
    results = await asyncio.gather(*(asyncio.shield(a) for a in pending), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise TransactionError(f"a record of the transaction was refused: {failure!r}") from failure
