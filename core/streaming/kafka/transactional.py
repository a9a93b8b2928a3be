"""``TransactionalProducerClient`` over an ``AIOKafkaProducer`` with a ``transactional_id``.

aiokafka's transactional errors are translated to the framework's, the ones the
embedded broker raises: a newer producer with the same id (``ProducerFenced``,
``InvalidProducerEpoch``, or any call after the producer turned fatal) is
``ProducerFencedError``; a transaction that cannot commit is ``TransactionError``;
a call in the wrong state (a send outside a transaction) is ``TransactionStateError``.

aiokafka speaks ``TxnOffsetCommit`` v0, which carries no group generation
(KIP-447): a zombie is fenced by its transactional id alone, so callers give
each input partition its own id (``core.streaming.orchestration.transactions``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from core.config.settings import RedpandaSettings
from core.streaming.errors import ProducerFencedError, TransactionError, TransactionStateError
from core.streaming.kafka.connection import to_kafka
from core.streaming.kafka.producer import KafkaProducerClient
from core.streaming.types import Headers, RecordMetadata, TopicPartition

_FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)


class KafkaTransactionalProducerClient(KafkaProducerClient):
    """A transactional ``AIOKafkaProducer`` (idempotent, acks=all) behind our surface."""

    def __init__(
        self,
        config: RedpandaSettings,
        transactional_id: str,
        *,
        client_id: str | None = None,
        max_request_size: int = 1_048_576,
        transaction_timeout_ms: int = 60_000,
        linger_ms: int = 5,
    ) -> None:
        if not transactional_id:
            raise ValueError("transactional_id must not be empty")
        super().__init__(
            config,
            client_id=client_id,
            linger_ms=linger_ms,
            max_request_size=max_request_size,
            transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
        )
        self._transactional_id = transactional_id

    @property
    def transactional_id(self) -> str:
        """The id every producer of this transactional identity shares."""
        return self._transactional_id

    def _fatal(self) -> bool:
        manager = self._producer._txn_manager
        return manager is not None and bool(manager.is_fatal_error())

    @contextlib.asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except _FENCED as exc:
            raise ProducerFencedError(
                f"producer {self._transactional_id!r} was fenced by a newer one ({what}): {exc}"
            ) from exc
        except IllegalOperation as exc:
            if self._fatal():
                raise ProducerFencedError(
                    f"producer {self._transactional_id!r} is fenced ({what})"
                ) from exc
            raise TransactionStateError(f"{what}: {exc}") from exc
        except AssertionError as exc:  # aiokafka asserts its state transitions
            if self._fatal():
                raise ProducerFencedError(
                    f"producer {self._transactional_id!r} is fenced ({what})"
                ) from exc
            raise TransactionStateError(f"{what} is not allowed now ({exc})") from exc
        except KafkaError as exc:
            if self._fatal():
                raise ProducerFencedError(
                    f"producer {self._transactional_id!r} is fenced ({what}): {exc}"
                ) from exc
            raise TransactionError(f"{what} of {self._transactional_id!r} failed: {exc}") from exc

    async def start(self) -> None:
        async with self._translated("start"):
            await super().start()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]:
        try:  # no context manager on the hot path: a try costs nothing until it raises
            return await super().send(topic, value, key, headers, partition)
        except (KafkaError, AssertionError, IllegalOperation):
            async with self._translated("send"):
                raise

    async def begin_transaction(self) -> None:
        async with self._translated("begin"):
            await self._producer.begin_transaction()

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        kafka_offsets = {to_kafka(tp): OffsetAndMetadata(o, "") for tp, o in offsets.items()}
        async with self._translated("send_offsets_to_transaction"):
            await self._producer.send_offsets_to_transaction(kafka_offsets, group_id)

    async def commit_transaction(self) -> None:
        async with self._translated("commit"):
            await self._producer.commit_transaction()

    async def abort_transaction(self) -> None:
        async with self._translated("abort"):
            await self._producer.abort_transaction()

    async def stop(self) -> None:
        # A fenced producer's sender task ended with the fencing error, which aiokafka's
        # stop re-raises before it closes the connections: close them here.
        try:
            await super().stop()
        except _FENCED:
            await self._producer.client.close()
        _retrieve(self._producer)


def _retrieve(producer: Any) -> None:
    """Mark a fenced producer's leftover transaction future as seen (no asyncio warning)."""
    manager = producer._txn_manager
    waiter = getattr(manager, "_transaction_waiter", None) if manager is not None else None
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        waiter.exception()
