"""The engine's outbox: events leave in order, and only once the broker acknowledged them.

A failed send stays queued and goes out with the retry of the message (or with
the next message). This matters because the retried signal finds its order
already placed (a duplicate, nothing new to publish): without the outbox its
events would be lost. The queue is in process memory; what is still queued when
the process dies was never published, so the ledger (and the book rebuilt from
it at the next start) does not have it, and the redelivered message does the
trade again.

Each event is sent in the context of the handler that queued it: under
exactly-once its record then goes into that handler's transaction, even when
another handler's flush sends it (the queue is shared by all partitions).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from pydantic import BaseModel

from core.schemas.events import EventType
from core.streaming.infrastructure.consumed_message import current_message
from core.streaming.infrastructure.message_producer import Payload
from core.streaming.infrastructure.transactions import current_transaction
from core.streaming.types import RecordMetadata


class Publisher(Protocol):
    """Where handlers publish events: ``MessageProducer.send`` has this shape."""

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        data: Payload,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One queued event."""

    topic: str
    key: str
    payload: BaseModel
    event_type: EventType
    correlation_id: str | None
    causation_id: str | None
    context: contextvars.Context | None = None  # of the handler that queued it


def _queued_here(item: Outgoing) -> bool:
    """True when ``item`` was queued by the handler (and transaction) now running."""
    context = item.context
    if context is None:
        return True
    return (
        context.run(current_transaction) is current_transaction()
        and context.run(current_message) is current_message()
    )


AckCallback = Callable[[RecordMetadata], None]


class Outbox:
    """An ordered queue of events, sent one at a time; each leaves once acknowledged.

    With ``on_ack`` and a publisher that can ``enqueue`` (``MessageProducer``),
    each acknowledgement's topic, partition and offset is reported, so the owner
    knows the ledger offsets its state corresponds to.
    """

    def __init__(self, publisher: Publisher, on_ack: AckCallback | None = None) -> None:
        self.publisher = publisher
        self.on_ack = on_ack
        self.sent = 0
        self._queue: deque[Outgoing] = deque()
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def add(
        self,
        topic: str,
        key: str,
        payload: BaseModel,
        event_type: EventType,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> None:
        """Queue one event behind the ones already queued."""
        self._queue.append(
            Outgoing(
                topic,
                key,
                payload,
                event_type,
                correlation_id,
                causation_id,
                contextvars.copy_context(),
            )
        )

    async def flush(self) -> None:
        """Send queued events in order; raises on the first failed send (it stays queued)."""
        async with self._lock:
            while self._queue:
                item = self._queue[0]
                if _queued_here(item):
                    await self._send(item)
                else:
                    await asyncio.create_task(self._send(item), context=item.context)
                self._queue.popleft()
                self.sent += 1

    async def _send(self, item: Outgoing) -> None:
        enqueue: Callable[..., Awaitable[Any]] | None = getattr(self.publisher, "enqueue", None)
        if enqueue is not None and self.on_ack is not None:
            pending = await enqueue(
                item.topic,
                item.key,
                item.payload,
                item.event_type,
                item.correlation_id,
                causation_id=item.causation_id,
            )
            self.on_ack(await pending.ack)
        else:
            await self.publisher.send(
                item.topic,
                item.key,
                item.payload,
                item.event_type,
                item.correlation_id,
                causation_id=item.causation_id,
            )
