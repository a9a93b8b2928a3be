"""Wraps a business handler with the reliability path of one consumer flow.

For each message: correlation context -> dedup claim -> handler -> mark done ->
offset finished -> metrics; on failure the :class:`ErrorHandler` retries or
dead-letters. A message is reported finished to the consumer (and so may be
committed) only in a final state: handled and marked done, skipped as a
duplicate, or dead-lettered with the broker's acknowledgement.

Dedup round trips are per batch: the dispatcher claims a fetched batch with one
call (:meth:`claim_batch`) and done marks are written in pipelined batches
(:meth:`flush_done`); only the rare cases (in-progress elsewhere, a release after
a dead letter) cost a round trip of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Any, TypeVar

from core.streaming.correlation import CorrelationContext, CorrelationLogger
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.message_producer import HEADER_TRACEPARENT, MessageProducer
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.error_handler import (
    DecodeError,
    ErrorHandler,
    ProcessingOutcome,
)
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.tracing import handling_span, tracing_active

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]
FinishCallback = Callable[[ConsumedMessage], None]

T = TypeVar("T")

_CLAIM_RETRY_INITIAL_S = 0.05
_CLAIM_RETRY_MAX_S = 1.0  # waiting for another worker's claim
_UNAVAILABLE_RETRY_MAX_S = 5.0  # waiting for the dedup store to come back


class MessageOutcome(StrEnum):
    """Final state a message reached."""

    HANDLED = "handled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def dedup_id(message: ConsumedMessage) -> str:
    """Identity used for deduplication: the envelope id, else the record's position."""
    return message.event_id or f"{message.topic}:{message.partition}:{message.offset}"


class ReliabilityLayer:
    """Cross-cutting concerns around one handler: dedup, errors, metrics, correlation."""

    def __init__(
        self,
        service_name: str,
        handler_func: Handler,
        consumer: MessageConsumer,
        deduplicator: DeduplicationManager | None = None,
        error_handler: ErrorHandler | None = None,
        metrics_collector: MetricsCollector | None = None,
        *,
        done_flush_size: int = 200,
    ) -> None:
        self.service_name = service_name
        self.handler_func = handler_func
        self.consumer = consumer
        self.deduplicator = deduplicator
        self.metrics_collector = metrics_collector
        self._owned_producer: MessageProducer | None = None
        if error_handler is None:
            self._owned_producer = MessageProducer(consumer.config, service_name)
            error_handler = ErrorHandler(
                self._owned_producer,
                service_name,
                consumer_group=consumer.group_id,
                metrics=metrics_collector,
            )
        self.error_handler = error_handler
        self.correlation_logger = CorrelationLogger(service_name)
        self._group = consumer.group_id
        self._tracing = tracing_active()
        self._handled_recorders: dict[str, Callable[[float], None]] = {}
        self._operation = f"process_{'+'.join(consumer.topics)}"
        self._finish_callbacks: list[FinishCallback] = []
        self._pending_done: list[tuple[ConsumedMessage, str]] = []
        self._done_flush_size = done_flush_size
        self._flush_lock = asyncio.Lock()
        self.outcomes: dict[MessageOutcome, int] = dict.fromkeys(MessageOutcome, 0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start what this layer owns (the default dead-letter producer)."""
        if self._owned_producer is not None:
            await self._owned_producer.start()

    async def stop(self) -> None:
        """Write pending done marks, then stop what this layer owns."""
        await self.flush_done()
        if self._owned_producer is not None:
            await self._owned_producer.stop()

    def add_finish_callback(self, callback: FinishCallback) -> None:
        """Called (synchronously) whenever a message reaches a final state."""
        self._finish_callbacks.append(callback)

    # ------------------------------------------------------------------ batch dedup

    async def claim_batch(self, messages: Iterable[ConsumedMessage]) -> dict[str, ClaimResult]:
        """Claim every decodable message's id with one round trip; retries on fail_closed."""
        self._tracing = tracing_active()
        if self.deduplicator is None:
            return {}
        ids = list(dict.fromkeys(dedup_id(m) for m in messages if m.is_decodable))
        if not ids:
            return {}
        return await self._with_dedup_retry(lambda: self.deduplicator_or_raise.claim_many(ids))

    @property
    def deduplicator_or_raise(self) -> DeduplicationManager:
        """The deduplicator (only called when one is configured)."""
        if self.deduplicator is None:
            raise RuntimeError("no deduplicator configured")
        return self.deduplicator

    async def _with_dedup_retry(self, call: Callable[[], Awaitable[T]]) -> T:
        backoff = _CLAIM_RETRY_INITIAL_S
        while True:
            try:
                return await call()
            except DedupUnavailableError as exc:
                self.correlation_logger.warning(
                    "dedup store unavailable, flow paused until it returns",
                    error=str(exc),
                    retry_in_s=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(_UNAVAILABLE_RETRY_MAX_S, backoff * 2)

    async def release_claims(
        self, items: Iterable[tuple[ConsumedMessage, ClaimResult | None]]
    ) -> None:
        """Give back batch claims of messages that will not be processed here."""
        if self.deduplicator is None:
            return
        ids = [dedup_id(m) for m, claim in items if claim is ClaimResult.CLAIMED]
        if ids:
            await self.deduplicator.release_many(ids)

    async def flush_done(self) -> None:
        """Write buffered done marks in one pipelined call, then finish their messages."""
        async with self._flush_lock:
            if not self._pending_done:
                return
            batch, self._pending_done = self._pending_done, []
            if self.deduplicator is not None:
                ids = [event_id for _, event_id in batch]
                await self._with_dedup_retry(lambda: self.deduplicator_or_raise.mark_done_many(ids))
            for message, _ in batch:
                self._finish(message, MessageOutcome.HANDLED)
        if self.consumer.commit_due():
            await self.consumer.commit_if_due()

    def _finish(self, message: ConsumedMessage, outcome: MessageOutcome) -> None:
        self.consumer.mark_finished(message)
        self.outcomes[outcome] += 1
        for callback in self._finish_callbacks:
            callback(message)

    # ------------------------------------------------------------------ one message

    async def process_message(
        self, raw_message: ConsumedMessage, claim: ClaimResult | None = None
    ) -> MessageOutcome:
        """Take one message to a final state (the plan's entry point).

        ``claim`` is the result of a batch claim made by the dispatcher; without
        it the id is claimed here with a round trip of its own. Offsets are
        committed here when the consumer's commit policy says so (every message
        under the per-message policy).
        """
        outcome = await self._process(raw_message, claim)
        if self.consumer.commit_due():  # checked here first: no coroutine per message
            await self.consumer.commit_if_due()
        return outcome

    async def _process(
        self, raw_message: ConsumedMessage, claim: ClaimResult | None
    ) -> MessageOutcome:
        metrics = self.metrics_collector
        if not raw_message.is_decodable:
            return await self._dead_letter_undecodable(raw_message)
        value = raw_message.value or {}
        correlation_id = value.get("correlation_id")
        event_id = dedup_id(raw_message)
        header = raw_message.header(HEADER_TRACEPARENT)
        traceparent = header.decode("ascii", "replace") if header else None
        with CorrelationContext.scope(
            self.service_name,
            self._operation,
            correlation_id=correlation_id if isinstance(correlation_id, str) else None,
            causation_id=raw_message.event_id,
            traceparent=traceparent,
        ):
            claim = await self._resolve_claim(event_id, claim, raw_message.claimed_at)
            if claim is not ClaimResult.DUPLICATE:
                if not self._tracing:
                    return await self._run_handler(raw_message, value, event_id, claim)
                with handling_span(
                    self.service_name,
                    raw_message.topic,
                    raw_message.partition,
                    raw_message.offset,
                    traceparent,
                ):
                    return await self._run_handler(raw_message, value, event_id, claim)
            self.correlation_logger.debug("skipping duplicate event", event_id=event_id)
            if metrics is not None:
                metrics.record_duplicate(raw_message.topic, consumer_group=self._group)
            self._finish(raw_message, MessageOutcome.DUPLICATE)
            return MessageOutcome.DUPLICATE

    async def _resolve_claim(
        self, event_id: str, claim: ClaimResult | None, claimed_at: float = 0.0
    ) -> ClaimResult:
        if self.deduplicator is None:
            return ClaimResult.BYPASSED
        dedup = self.deduplicator
        if (
            claim is ClaimResult.CLAIMED
            and time.monotonic() - claimed_at > dedup.processing_ttl_ms / 2000
            and not await self._with_dedup_retry(lambda: dedup.refresh(event_id))
        ):
            # The batch claim waited in the lane long enough to expire: claim again,
            # so a worker that took it meanwhile is not run twice.
            claim = None
        if claim is None:
            claim = await self._with_dedup_retry(lambda: dedup.claim(event_id))
        backoff = _CLAIM_RETRY_INITIAL_S
        while claim is ClaimResult.IN_PROGRESS:
            # Another worker (or an earlier copy still awaiting its done mark) holds it:
            # wait until it is done, released, or its claim expires.
            await self.flush_done()
            await asyncio.sleep(backoff)
            backoff = min(_CLAIM_RETRY_MAX_S, backoff * 2)
            claim = await self._with_dedup_retry(lambda: dedup.claim(event_id))
        return claim

    async def _run_handler(
        self,
        message: ConsumedMessage,
        value: dict[str, Any],
        event_id: str,
        claim: ClaimResult,
    ) -> MessageOutcome:
        metrics = self.metrics_collector
        started = time.monotonic()
        try:
            await self.handler_func(value)
        except Exception as exc:
            if metrics is not None:
                metrics.record_error(message.topic, type(exc).__name__, consumer_group=self._group)
            self.correlation_logger.warning(
                "handler failed",
                error_type=type(exc).__name__,
                error=str(exc)[:500],
                location=message.location(),
            )
            return await self._on_failure(message, value, event_id, claim, exc, started)
        if metrics is not None:
            recorder = self._handled_recorders.get(message.topic)
            if recorder is None:
                recorder = metrics.handled_recorder(message.topic, self._group)
                self._handled_recorders[message.topic] = recorder
            recorder(time.monotonic() - started)
        await self._handled(message, event_id, claim)
        return MessageOutcome.HANDLED

    async def _handled(self, message: ConsumedMessage, event_id: str, claim: ClaimResult) -> None:
        if claim is ClaimResult.CLAIMED:
            self._pending_done.append((message, event_id))
            if (
                len(self._pending_done) >= self._done_flush_size
                or self.consumer.commit_policy.per_message
            ):
                await self.flush_done()
        else:
            self._finish(message, MessageOutcome.HANDLED)

    async def _on_failure(
        self,
        message: ConsumedMessage,
        value: dict[str, Any],
        event_id: str,
        claim: ClaimResult,
        error: Exception,
        started: float,
    ) -> MessageOutcome:
        finished = False

        async def commit_func() -> None:
            nonlocal finished
            finished = True

        outcome = await self.error_handler.handle_processing_error(
            message,
            error,
            processing_func=lambda: self.handler_func(value),
            commit_func=commit_func,
        )
        if not finished:
            raise RuntimeError(
                f"error handler returned {outcome} for {message.location()} without finishing it"
            )
        if outcome is ProcessingOutcome.HANDLED:
            if self.metrics_collector is not None:
                self.metrics_collector.record_handled(
                    message.topic, time.monotonic() - started, consumer_group=self._group
                )
            await self._handled(message, event_id, claim)
            return MessageOutcome.HANDLED
        if claim is ClaimResult.CLAIMED and self.deduplicator is not None:
            await self.deduplicator.release(event_id)
        self._finish(message, MessageOutcome.DEAD_LETTERED)
        return MessageOutcome.DEAD_LETTERED

    async def _dead_letter_undecodable(self, message: ConsumedMessage) -> MessageOutcome:
        if self.metrics_collector is not None:
            self.metrics_collector.record_decode_failure(message.topic, consumer_group=self._group)
        self.correlation_logger.warning(
            "undecodable message sent to dead letters",
            location=message.location(),
            reason=message.decode_error,
        )
        await self.error_handler.dead_letter(
            message, DecodeError(message.decode_error or "undecodable"), attempts=1
        )
        self._finish(message, MessageOutcome.DEAD_LETTERED)
        return MessageOutcome.DEAD_LETTERED
