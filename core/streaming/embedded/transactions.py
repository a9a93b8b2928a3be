"""Transactions on the embedded broker, in Kafka's shape and a simple form.

A transactional producer's records are appended to the logs at once, marked as
belonging to its open transaction; its offsets wait beside the transaction.
Commit and abort are atomic: one control marker is appended to every partition
the transaction wrote to (it takes an offset, as Kafka's does, and no consumer
ever sees it), the offsets become the group's committed offsets (on commit) or
are dropped (on abort), and aborted records are remembered. A ``read_committed``
consumer reads up to the partition's last stable offset (the first record of the
oldest open transaction) and skips aborted records; ``read_uncommitted`` sees
everything but the markers.

Each transactional id has an epoch. Starting a producer bumps it: the open
transaction of the older producer is aborted and every later call of that
producer fails with ``ProducerFencedError``. A transaction left open longer than
its ``transaction_timeout_ms`` is aborted and its producer fenced the same way
(checked whenever the broker touches transactions).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from core.streaming.embedded.log import PartitionLog, PartitionTxnState
from core.streaming.errors import (
    ProducerFencedError,
    TransactionError,
    TransactionStateError,
    UnknownTopicOrPartitionError,
)
from core.streaming.types import Record, TopicPartition


class _Group(Protocol):
    @property
    def committed(self) -> dict[TopicPartition, int]: ...


class _Broker(Protocol):
    """What the coordinator needs of the broker it belongs to."""

    def partition_log(self, tp: TopicPartition) -> PartitionLog | None: ...

    def group(self, group_id: str) -> _Group: ...

    def notify(self, topic: str) -> None: ...


@dataclass
class _OpenTransaction:
    epoch: int
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    written: dict[TopicPartition, list[int]] = field(default_factory=dict)  # offsets appended
    offsets: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    failed: BaseException | None = None  # a record was refused: the transaction must abort


class TransactionCoordinator:
    """The broker's transaction state: epochs by transactional id and open transactions."""

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker
        self._epochs: dict[str, int] = {}
        self._open: dict[str, _OpenTransaction] = {}

    def init_producer(self, transactional_id: str) -> int:
        """Register a producer of ``transactional_id``; returns its epoch (older ones fenced)."""
        self.expire()
        previous = self._open.pop(transactional_id, None)
        if previous is not None:
            self._finish(transactional_id, previous, commit=False)
        epoch = self._epochs.get(transactional_id, -1) + 1
        self._epochs[transactional_id] = epoch
        return epoch

    def check(self, transactional_id: str, epoch: int) -> None:
        """Raise ``ProducerFencedError`` unless ``epoch`` is the id's current one."""
        self.expire()
        if self._epochs.get(transactional_id) != epoch:
            raise ProducerFencedError(
                f"producer {transactional_id!r} (epoch {epoch}) was fenced: a newer producer "
                "with this transactional id started, or its transaction timed out"
            )

    def begin(self, transactional_id: str, epoch: int, timeout_s: float) -> None:
        """Open a transaction for the current producer of ``transactional_id``."""
        self.check(transactional_id, epoch)
        if transactional_id in self._open:
            raise TransactionStateError(f"{transactional_id!r} already has an open transaction")
        self._open[transactional_id] = _OpenTransaction(epoch, timeout_s)

    def _transaction(self, transactional_id: str, epoch: int) -> _OpenTransaction:
        self.check(transactional_id, epoch)
        found = self._open.get(transactional_id)
        if found is None:
            raise TransactionStateError(f"{transactional_id!r} is not in a transaction")
        return found

    def check_sendable(self, transactional_id: str, epoch: int) -> None:
        """Raise unless the producer (at ``epoch``) may send now: fenced, or not in a
        transaction, or in one that must be aborted."""
        txn = self._transaction(transactional_id, epoch)
        if txn.failed is not None:
            raise TransactionStateError(
                f"the transaction of {transactional_id!r} must be aborted: a record was "
                f"refused ({txn.failed})"
            )

    def refused(self, transactional_id: str, epoch: int, error: BaseException) -> None:
        """A record of the open transaction was refused: only abort is possible now."""
        txn = self._open.get(transactional_id)
        if txn is not None and txn.epoch == epoch:
            txn.failed = error

    def wrote(self, transactional_id: str, epoch: int, record: Record) -> None:
        """A record of the open transaction was appended."""
        txn = self._transaction(transactional_id, epoch)
        tp = TopicPartition(record.topic, record.partition)
        written = txn.written.get(tp)
        if written is None:
            txn.written[tp] = [record.offset]
            log = self._broker.partition_log(tp)
            assert log is not None
            _state_of(log).open_first[transactional_id] = record.offset
        else:
            written.append(record.offset)

    def add_offsets(
        self,
        transactional_id: str,
        epoch: int,
        offsets: Mapping[TopicPartition, int],
        group_id: str,
    ) -> None:
        """Offsets to commit for ``group_id`` when the transaction commits."""
        txn = self._transaction(transactional_id, epoch)
        if not group_id:
            raise ValueError("group_id must not be empty")
        for tp, offset in offsets.items():
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"offset for {tp} must be a non-negative int, got {offset!r}")
            if self._broker.partition_log(tp) is None:
                raise UnknownTopicOrPartitionError(f"partition {tp} does not exist")
        txn.offsets.setdefault(group_id, {}).update(offsets)

    def end(self, transactional_id: str, epoch: int, *, commit: bool) -> None:
        """Commit or abort the open transaction, atomically.

        A commit of a transaction one of whose records was refused raises
        ``TransactionError`` and leaves it open: it can only be aborted.
        """
        txn = self._transaction(transactional_id, epoch)
        if commit and txn.failed is not None:
            raise TransactionError(
                f"transaction of {transactional_id!r} cannot commit: a record was refused "
                f"({txn.failed}); abort it"
            ) from txn.failed
        del self._open[transactional_id]
        self._finish(transactional_id, txn, commit=commit)

    def expire(self) -> None:
        """Abort transactions open past their timeout and fence their producers."""
        if not self._open:
            return
        now = time.monotonic()
        for transactional_id, txn in list(self._open.items()):
            if now - txn.started > txn.timeout_s:
                del self._open[transactional_id]
                self._finish(transactional_id, txn, commit=False)
                self._epochs[transactional_id] = self._epochs.get(transactional_id, 0) + 1

    def _finish(self, transactional_id: str, txn: _OpenTransaction, *, commit: bool) -> None:
        broker = self._broker
        touched: set[str] = set()
        for tp, written in txn.written.items():
            log = broker.partition_log(tp)
            if log is None:  # the topic was deleted meanwhile
                continue
            state = _state_of(log)
            state.open_first.pop(transactional_id, None)
            if not commit:
                state.aborted.update(written)
            marker = log.append(None, None, (), time.time_ns() // 1_000_000)
            state.control.add(marker.offset)
            touched.add(tp.topic)
        if commit:
            for group_id, group_offsets in txn.offsets.items():
                broker.group(group_id).committed.update(group_offsets)
        for topic in touched:
            broker.notify(topic)


def _state_of(log: PartitionLog) -> PartitionTxnState:
    if log.txn is None:
        log.txn = PartitionTxnState()
    return log.txn
