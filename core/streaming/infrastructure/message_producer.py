"""Enveloped production: wrap payloads in an ``EventEnvelope``, stamp correlation, send.

``send`` returns the event id once the broker acknowledged the record.
``enqueue`` returns at once with an awaitable acknowledgement, so many sends can
be in flight and awaited together (``send_many``). ``send_raw`` keeps given bytes
and headers untouched, for dead letters and replays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import orjson
from pydantic import BaseModel

from core.config.settings import RedpandaSettings
from core.schemas.events import EventEnvelope, generate_uuid7, utc_now
from core.streaming.clients import PRODUCER_STATE_ERRORS, ProducerClient, create_producer
from core.streaming.correlation import HEADER_TRACEPARENT, CorrelationContext
from core.streaming.errors import ClientClosedError
from core.streaming.infrastructure.closing import bounded_close
from core.streaming.infrastructure.consumed_message import track_output
from core.streaming.infrastructure.transactions import current_transaction
from core.streaming.tracing import current_traceparent
from core.streaming.types import Headers, RecordMetadata

logger = logging.getLogger(__name__)

HEADER_EVENT_ID = "event-id"
HEADER_EVENT_TYPE = "event-type"
HEADER_CORRELATION_ID = "correlation-id"
HEADER_CAUSATION_ID = "causation-id"
HEADER_SOURCE = "source"

Payload = Mapping[str, Any] | BaseModel | EventEnvelope


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A send handed to the client: the event id and its acknowledgement."""

    event_id: str
    ack: Awaitable[RecordMetadata]


def encode_key(key: str | bytes | None) -> bytes | None:
    """Key bytes for Kafka: ``None`` stays ``None``, text is UTF-8."""
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode("utf-8")


def _type_name(event_type: str | Enum | None, data: Any) -> str:
    if event_type is not None:
        return event_type.value if isinstance(event_type, Enum) else str(event_type)
    if isinstance(data, Mapping) and isinstance(data.get("type"), str):
        return str(data["type"])
    return "unknown"


class MessageProducer:
    """An idempotent (acks=all) producer of enveloped events for one service."""

    def __init__(
        self,
        config: RedpandaSettings,
        service_name: str,
        *,
        max_request_size: int = 1_048_576,
        stop_timeout_s: float = 10.0,
        client_factory: Callable[..., ProducerClient] | None = None,
    ) -> None:
        self.config = config
        self.service_name = service_name
        self.max_request_size = max_request_size
        self.stop_timeout_s = stop_timeout_s
        self._client_factory = client_factory or create_producer
        self._client: ProducerClient | None = None
        self._running = False
        self._stopped = False
        self._start_lock = asyncio.Lock()
        self._broken = False
        self._closing: set[asyncio.Task[None]] = set()
        self.sent = 0

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    async def start(self) -> None:
        """Connect the producer. Idempotent; a stopped producer can be started again."""
        async with self._start_lock:
            if self._running:
                return
            self._stopped = False
            self._client = await self._new_client()
            self._running = True

    async def _new_client(self) -> ProducerClient:
        client = self._client_factory(
            self.config,
            client_id=f"{self.config.client_id}-producer-{self.service_name}",
            max_request_size=self.max_request_size,
        )
        await client.start()
        return client

    def _watch(self, ack: Awaitable[RecordMetadata]) -> None:
        """Note a send whose failure leaves the client unusable (broken sequence state)."""
        if isinstance(ack, asyncio.Future):
            ack.add_done_callback(self._on_ack)

    def _on_ack(self, ack: asyncio.Future[RecordMetadata]) -> None:
        if ack.cancelled():
            return
        if isinstance(ack.exception(), PRODUCER_STATE_ERRORS):
            self._broken = True

    async def _renew_client(self) -> None:
        """Replace a client whose idempotence state broke; the old one closes in the background."""
        async with self._start_lock:
            if not self._broken or self._client is None:
                return
            self._broken = False
            old, self._client = self._client, await self._new_client()
            logger.warning(
                "producer of %s: its sequence state broke after a refused record; "
                "using a new producer",
                self.service_name,
            )
        closing = asyncio.create_task(
            bounded_close(old.stop(), self.stop_timeout_s, f"old producer of {self.service_name}")
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """Flush everything in flight, then disconnect. Idempotent."""
        self._stopped = True
        if not self._running or self._client is None:
            return
        self._running = False
        client, self._client = self._client, None
        try:
            await asyncio.wait_for(client.flush(), self.stop_timeout_s)
        except TimeoutError:
            logger.error(
                "producer of %s: records still unacknowledged after %s s at stop",
                self.service_name,
                self.stop_timeout_s,
            )
        finally:
            await bounded_close(
                client.stop(), self.stop_timeout_s, f"producer of {self.service_name}"
            )

    async def flush(self) -> None:
        """Wait until every enqueued record is acknowledged."""
        if self._client is not None:
            await self._client.flush()

    async def _ready_client(self) -> ProducerClient:
        """The client, started on first use; a producer stopped on purpose stays stopped."""
        if self._stopped:
            raise ClientClosedError(f"producer of {self.service_name} is stopped")
        if not self._running:
            await self.start()
        if self._broken:
            await self._renew_client()
        if self._client is None:
            raise ClientClosedError("producer is stopped")
        return self._client

    # ------------------------------------------------------------------ envelopes

    def build_envelope(
        self,
        data: Payload,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """The envelope dict for ``data``, stamped from the correlation context.

        ``event_id`` fixes the envelope id (so a retried send can be deduplicated);
        a new UUIDv7 is used otherwise.

        An ``EventEnvelope`` is sent as it is; any other payload (a mapping or a
        pydantic model) is wrapped, even if it has an ``id`` field of its own.
        """
        if isinstance(data, EventEnvelope):
            return data.model_dump(mode="json")
        if isinstance(data, BaseModel):
            payload: dict[str, Any] = data.model_dump(mode="json")
        elif isinstance(data, Mapping):
            payload = dict(data)
        else:
            raise TypeError(
                f"data must be a mapping, a pydantic model or an EventEnvelope, "
                f"not {type(data).__name__}"
            )
        ctx = CorrelationContext.current()
        return {
            "id": event_id or generate_uuid7(),
            "type": _type_name(event_type, payload),
            "timestamp": utc_now(),
            "source": self.service_name,
            "correlation_id": correlation_id or (ctx.correlation_id if ctx else None),
            "causation_id": causation_id or (ctx.causation_id if ctx else None),
            "schema_version": 1,
            "data": payload,
        }

    @staticmethod
    def envelope_headers(envelope: Mapping[str, Any]) -> list[tuple[str, bytes]]:
        """Kafka headers mirroring the envelope's identity and causality."""
        headers = [
            (HEADER_EVENT_ID, str(envelope["id"]).encode()),
            (HEADER_EVENT_TYPE, str(envelope["type"]).encode()),
            (HEADER_SOURCE, str(envelope.get("source", "")).encode()),
        ]
        if envelope.get("correlation_id"):
            headers.append((HEADER_CORRELATION_ID, str(envelope["correlation_id"]).encode()))
        if envelope.get("causation_id"):
            headers.append((HEADER_CAUSATION_ID, str(envelope["causation_id"]).encode()))
        traceparent = current_traceparent()
        if traceparent is None:
            ctx = CorrelationContext.current()
            traceparent = ctx.traceparent if ctx is not None else None
        if traceparent:
            headers.append((HEADER_TRACEPARENT, traceparent.encode()))
        return headers

    @staticmethod
    def _dumps(envelope: Mapping[str, Any]) -> bytes:
        try:
            return orjson.dumps(envelope, default=_json_default)
        except TypeError as exc:
            raise TypeError(
                f"event {envelope.get('type')!r} is not JSON-serializable: {exc}"
            ) from exc

    # ------------------------------------------------------------------ sending

    async def enqueue(
        self,
        topic: str,
        key: str | bytes | None,
        data: Payload,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        event_id: str | None = None,
    ) -> PendingSend:
        """Hand one event to the client without waiting for the broker.

        Inside a handler the acknowledgement belongs to the message being
        handled: its offset is not committed before the broker acknowledged the
        send, and a send that fails fails that message (retry, then dead letter).
        """
        pending = await self._send_envelope(
            topic, key, data, event_type, correlation_id, causation_id, headers, partition, event_id
        )
        track_output(pending.ack)
        return pending

    async def _send_envelope(
        self,
        topic: str,
        key: str | bytes | None,
        data: Payload,
        event_type: str | Enum | None,
        correlation_id: str | None,
        causation_id: str | None,
        headers: Headers | None,
        partition: int | None,
        event_id: str | None,
    ) -> PendingSend:
        envelope = self.build_envelope(data, event_type, correlation_id, causation_id, event_id)
        all_headers: list[tuple[str, bytes | None]] = list(self.envelope_headers(envelope))
        if headers:
            all_headers.extend(headers)
        ack = await self._send(
            topic, self._dumps(envelope), encode_key(key), all_headers, partition
        )
        self.sent += 1
        return PendingSend(str(envelope["id"]), ack)

    async def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | None,
        partition: int | None,
    ) -> Awaitable[RecordMetadata]:
        """Hand a record to the client, or to the open transaction of the input partition
        whose handler is running in an exactly-once flow."""
        transaction = current_transaction()
        if transaction is not None:
            if self._stopped:
                raise ClientClosedError(f"producer of {self.service_name} is stopped")
            return await transaction.send(
                topic, value, key=key, headers=headers, partition=partition
            )
        client = await self._ready_client()
        ack = await client.send(topic, value, key=key, headers=headers, partition=partition)
        self._watch(ack)
        return ack

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        data: Payload,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
        headers: Headers | None = None,
        event_id: str | None = None,
    ) -> str:
        """Send one event and return its id once the broker acknowledged it."""
        pending = await self._send_envelope(
            topic, key, data, event_type, correlation_id, causation_id, headers, None, event_id
        )
        await pending.ack
        return pending.event_id

    async def send_many(
        self,
        topic: str,
        items: Sequence[tuple[str | bytes | None, Payload]],
        event_type: str | Enum | None = None,
    ) -> list[str]:
        """Send many events with all of them in flight at once; ids in order."""
        pending = [await self.enqueue(topic, key, data, event_type) for key, data in items]
        await asyncio.gather(*(p.ack for p in pending))
        return [p.event_id for p in pending]

    async def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> RecordMetadata:
        """Send bytes and headers exactly as given; return the broker's acknowledgement."""
        ack = await self._send(topic, value, key, headers, partition)
        metadata = await ack
        self.sent += 1
        return metadata


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
