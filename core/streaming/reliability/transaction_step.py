"""The step of an exactly-once flow: a run of one partition inside that partition's transaction.

It sits outside the retry/dead-letter step, so dead letters (and retry-topic
forwards) of the run go into the same transaction as the handlers' outputs. It
holds the partition's transaction lock for the run, so the checkpoint commits
only between runs, and routes every send of the run into the transaction. Its
``message_scope`` voids the records of a handler attempt that failed, so a retry
does not commit them twice.

Messages fetched before this member owned the partition's transaction (the
assignment rewinds the partition once its producer fenced the previous owner),
and messages of a partition whose producer was fenced, are left unrun: they are
never committed here.
"""

from __future__ import annotations

from collections.abc import Callable

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.transactions import (
    PartitionTransactions,
    current_transaction,
    route_to,
    stop_routing,
)
from core.streaming.reliability.steps import Batch, Next
from core.streaming.types import TopicPartition


class TransactionStep:
    """Runs each run of an exactly-once flow inside its partition's transaction."""

    def __init__(
        self,
        transactions: PartitionTransactions,
        generation_of: Callable[[TopicPartition], int | None],
    ) -> None:
        self.transactions = transactions
        self.generation_of = generation_of

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        tp = batch[0].topic_partition  # a run is one partition's (ordering="partition")
        ptx = self.transactions.get(tp)
        if ptx is None:
            return  # not ours (yet, or any more): the run stays unrun and uncommitted
        generation = self.generation_of(tp)
        runnable = [m for m in batch if m.generation == generation]
        if not runnable:
            return
        async with ptx.lock:
            token = route_to(ptx)
            try:
                await call_next(runnable)
            finally:
                stop_routing(token)
                if ptx.fenced is not None:
                    self.transactions.note_fenced(ptx)

    def message_scope(self, message: ConsumedMessage) -> _VoidOnFailure:
        """Around one handler call: a failed attempt's records leave the transaction."""
        return _VoidOnFailure(message)


class _VoidOnFailure:
    """A context manager (a class, not a generator: it runs for every handled message)."""

    __slots__ = ("message",)

    def __init__(self, message: ConsumedMessage) -> None:
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            ptx = current_transaction()
            if ptx is not None:
                ptx.void(self.message.offset)
