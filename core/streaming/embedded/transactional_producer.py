"""The embedded broker's transactional producer (a ``TransactionalProducerClient``).

Its records go to the log at once, inside its open transaction; commit and abort
are the broker's (``core.streaming.embedded.transactions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.embedded.producer import InMemoryProducer
from core.streaming.embedded.transactions import TransactionCoordinator
from core.streaming.errors import ClientClosedError, ProducerFencedError
from core.streaming.types import Headers, Record, StoredRecord, TopicPartition


class InMemoryTransactionalProducer(InMemoryProducer):
    """A transactional producer on the embedded broker (a ``TransactionalProducerClient``)."""

    def __init__(
        self,
        broker: InMemoryBroker,
        transactional_id: str,
        *,
        max_request_size: int = 1_048_576,
        client_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        if not transactional_id:
            raise ValueError("transactional_id must not be empty")
        if transaction_timeout_ms <= 0:
            raise ValueError("transaction_timeout_ms must be positive")
        super().__init__(broker, max_request_size=max_request_size, client_id=client_id)
        self._transactional_id = transactional_id
        self._timeout_s = transaction_timeout_ms / 1000
        self._epoch = -1

    @property
    def transactional_id(self) -> str:
        """The id every producer of this transactional identity shares."""
        return self._transactional_id

    @property
    def _coordinator(self) -> TransactionCoordinator:
        return self._broker.transactions

    async def start(self) -> None:
        """Register with the broker, fencing older producers of the same id."""
        already = self._started and not self._stopped
        await super().start()
        if not already:
            self._epoch = self._coordinator.init_producer(self._transactional_id)

    def _ready(self) -> None:
        if self._stopped or not self._started:
            raise ClientClosedError("producer is not running")

    async def begin_transaction(self) -> None:
        self._ready()
        self._coordinator.begin(self._transactional_id, self._epoch, self._timeout_s)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[StoredRecord]:
        """Append one record to the open transaction (refused outside one)."""
        self._ready()
        coordinator = self._coordinator
        try:
            coordinator.check_sendable(self._transactional_id, self._epoch)
        except ProducerFencedError as exc:
            # As on Kafka, the broker's refusal of a fenced producer arrives on the ack.
            fenced: asyncio.Future[StoredRecord] = asyncio.get_running_loop().create_future()
            fenced.set_exception(exc)
            return fenced
        future = await super().send(topic, value, key, headers, partition)
        if future.done() and future.exception() is not None:
            coordinator.refused(self._transactional_id, self._epoch, future.exception())  # type: ignore[arg-type]
        return future

    def _stored(self, record: Record) -> None:
        self._coordinator.wrote(self._transactional_id, self._epoch, record)

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self._ready()
        self._coordinator.add_offsets(self._transactional_id, self._epoch, offsets, group_id)

    async def commit_transaction(self) -> None:
        self._ready()
        self._coordinator.end(self._transactional_id, self._epoch, commit=True)

    async def abort_transaction(self) -> None:
        self._ready()
        self._coordinator.end(self._transactional_id, self._epoch, commit=False)
