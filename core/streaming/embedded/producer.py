"""The embedded broker's producer: stores each record before ``send`` returns.

It implements ``ProducerClient`` of ``core.streaming.broker_api`` with the Kafka
adapter's refusals (``core.streaming.kafka``).
"""

from __future__ import annotations

import asyncio

from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.embedded.log import estimate_record_size
from core.streaming.embedded.partitioner import RoundRobin
from core.streaming.errors import ClientClosedError, EmptyRecordError, MessageTooLargeError
from core.streaming.types import Headers, Record, StoredRecord
from core.topic_names import validate_topic_name


def _as_bytes(value: bytes | bytearray | memoryview | None, what: str) -> bytes | None:
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or None, got {type(value).__name__}")


def _normalize_headers(headers: Headers | None) -> tuple[tuple[str, bytes | None], ...]:
    """Headers as stored: str names, bytes or None values (Kafka keeps a null value)."""
    if not headers:
        return ()
    out: list[tuple[str, bytes | None]] = []
    for name, data in headers:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__}")
        out.append((name, _as_bytes(data, f"header {name!r}")))
    return tuple(out)


class InMemoryProducer:
    """A producer on the embedded broker (a ``ProducerClient``); acknowledges at once."""

    def __init__(
        self,
        broker: InMemoryBroker,
        *,
        max_request_size: int = 1_048_576,
        client_id: str | None = None,
    ) -> None:
        if max_request_size <= 0:
            raise ValueError(f"max_request_size must be positive, got {max_request_size}")
        self._broker = broker
        self._max_request_size = max_request_size
        self.client_id = client_id or "tradestream-producer"
        self._round_robin = RoundRobin()
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        return f"InMemoryProducer(client_id={self.client_id!r})"

    async def start(self) -> None:
        """Make the producer usable (idempotent)."""
        if self._started and not self._stopped:
            return
        if self._stopped:
            raise ClientClosedError("a stopped producer cannot be restarted")
        self._started = True

    async def stop(self) -> None:
        """Close the producer (idempotent); every send is already stored."""
        self._stopped = True

    async def flush(self) -> None:
        """Nothing to wait for: ``send`` stores the record before it returns."""

    def _check(self) -> None:
        if self._stopped or not self._started:
            raise ClientClosedError("producer is not running")

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[StoredRecord]:
        """Append one record; returns an already completed acknowledgement.

        As with Kafka, refusals of the client raise here: ``InvalidTopicNameError``
        for an illegal name, ``EmptyRecordError`` without key and value,
        ``MessageTooLargeError`` above ``max_request_size``,
        ``UnknownTopicOrPartitionError`` for a missing topic when auto-creation is
        off or a partition out of range. The broker's refusal of a record above the
        topic's ``max.message.bytes`` arrives on the acknowledgement, as
        ``MessageTooLargeError``. Nothing is stored in either case.
        """
        self._check()
        validate_topic_name(topic)
        key_bytes = _as_bytes(key, "key")
        value_bytes = _as_bytes(value, "value")
        if key_bytes is None and value_bytes is None:
            raise EmptyRecordError(f"record for {topic} has neither key nor value; not sent")
        header_items = _normalize_headers(headers)
        size = estimate_record_size(key_bytes, value_bytes, header_items)
        if size > self._max_request_size:
            raise MessageTooLargeError(
                f"record for {topic} is {size} bytes when serialized, above the "
                f"max_request_size of {self._max_request_size} bytes; nothing was sent"
            )
        future: asyncio.Future[StoredRecord] = asyncio.get_running_loop().create_future()
        try:
            record = self._broker.append(
                topic,
                value_bytes,
                key=key_bytes,
                headers=header_items,
                partition=partition,
                round_robin=self._round_robin,
            )
        except MessageTooLargeError as exc:
            future.set_exception(exc)
            return future
        self._stored(record)
        future.set_result(
            StoredRecord(record.topic, record.partition, record.offset, record.timestamp)
        )
        return future

    def _stored(self, record: Record) -> None:
        """Called for each record this producer appended (transactions keep track)."""

    async def partitions_for(self, topic: str) -> set[int]:
        """Partition numbers of ``topic``, created first if auto-creation is on."""
        self._check()
        return set(range(self._broker.ensure_topic(topic)))
