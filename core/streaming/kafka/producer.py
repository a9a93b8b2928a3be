"""``ProducerClient`` over an idempotent, acks=all ``AIOKafkaProducer``.

aiokafka's own refusals are translated to the framework's errors, the ones the
embedded broker raises: an empty record, a partition out of range (a bare
``AssertionError`` in aiokafka), an unknown topic, and a record the broker finds
too large, which arrives on the acknowledgement (see ``core.streaming.kafka.acks``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidTopicError as KafkaInvalidTopicError
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.errors import UnknownTopicOrPartitionError as KafkaUnknownTopicOrPartitionError

from core.config.settings import RedpandaSettings
from core.streaming.errors import (
    ClientClosedError,
    EmptyRecordError,
    MessageTooLargeError,
    UnknownTopicOrPartitionError,
)
from core.streaming.kafka import acks
from core.streaming.kafka.connection import connection_kwargs
from core.streaming.types import Headers, RecordMetadata
from core.topic_names import validate_topic_name

acks.install()


class KafkaProducerClient:
    """``ProducerClient`` over an idempotent ``AIOKafkaProducer`` with acks=all."""

    def __init__(
        self,
        config: RedpandaSettings,
        *,
        client_id: str | None = None,
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        idempotent: bool = True,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        compression = None if config.compression_type == "none" else config.compression_type
        self._producer = AIOKafkaProducer(
            client_id=client_id or f"{config.client_id}-producer",
            enable_idempotence=idempotent,
            acks="all",
            linger_ms=linger_ms,
            compression_type=compression,
            max_request_size=max_request_size,
            request_timeout_ms=config.request_timeout_ms,
            retry_backoff_ms=100,
            transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
            **connection_kwargs(config),
        )
        self._max_request_size = max_request_size
        self._topics: set[str] = set()  # names already found legal
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        if self._stopped:
            raise ClientClosedError("a stopped producer cannot be restarted")
        if self._started:
            return
        # The sender task starts here and keeps this context: refusals are translated.
        with acks.translated_refusals():
            await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            await self._producer.stop()

    async def flush(self) -> None:
        if self._started and not self._stopped:
            await self._producer.flush()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]:
        if self._stopped or not self._started:
            raise ClientClosedError("producer is not running")
        if topic not in self._topics:
            self._topics.add(validate_topic_name(topic))
        if key is None and value is None:
            raise EmptyRecordError(f"record for {topic} has neither key nor value; not sent")
        try:
            sent: asyncio.Future[RecordMetadata] = await self._producer.send(
                topic, value=value, key=key, partition=partition, headers=list(headers or ())
            )
        except MessageSizeTooLargeError as exc:
            size = len(value or b"") + len(key or b"")
            size += sum(len(k) + len(v or b"") for k, v in headers or ())
            raise MessageTooLargeError(
                f"record for {topic} is about {size} bytes, above the limit of "
                f"{self._max_request_size} bytes; nothing was sent"
            ) from exc
        except KafkaInvalidTopicError as exc:
            raise ValueError(f"broker refused topic name {topic!r}") from exc
        except KafkaUnknownTopicOrPartitionError as exc:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} is not known to the broker and could not be created"
            ) from exc
        except AssertionError as exc:
            # aiokafka asserts that an explicit partition exists in its metadata.
            if partition is None:
                raise
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has no partition {partition}; nothing was sent"
            ) from exc
        return sent

    async def partitions_for(self, topic: str) -> set[int]:
        return set(await self._producer.partitions_for(topic))
