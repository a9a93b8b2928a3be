"""What happens to a message whose handler failed: classify, retry, dead-letter.

Every failure is classified (:func:`classify_error`). A retryable one is retried
with exponential backoff and jitter up to ``max_attempts`` attempts in total; a
permanent one stops retrying at once. A message that still fails is written to
its dead-letter topic (:mod:`dead_letter_writer`); only once the broker has
acknowledged that write is the message final. With dead letters disabled a
failing message is retried with capped backoff until it succeeds or the flow
stops: it is never committed unhandled.

:class:`ErrorHandler` is also the flow's retry step: in the chain it settles
each failed message before later messages of the same lane run, so blocking
retries keep per-lane order. Dead-letter topic rule: ``dead_letter_topic`` when
given, otherwise ``<original topic><dead_letter_suffix>`` (``orders.dlq``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum

from pydantic import ValidationError
from tenacity import RetryCallState, wait_exponential

from core.streaming.clients import TOO_LARGE_ERRORS, TRANSIENT_CLIENT_ERRORS
from core.streaming.errors import DecodeError, PermanentError, RetryableError
from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.dead_letter_writer import (
    DEAD_LETTER_HEADERS,
    HEADER_ATTEMPTS,
    HEADER_CONSUMER_GROUP,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TRACEBACK,
    HEADER_EXCEPTION_TYPE,
    HEADER_FAILED_AT,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_SIZE,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REFERENCE,
    HEADER_SERVICE,
    DeadLetterAbortedError,
    DeadLetterWriter,
    dead_letter_headers,
    exception_type_name,
)
from core.streaming.reliability.sensors import Sensor
from core.streaming.reliability.steps import Batch, Next

logger = logging.getLogger(__name__)

__all__ = [
    "DEAD_LETTER_HEADERS",
    "HEADER_ATTEMPTS",
    "HEADER_CONSUMER_GROUP",
    "HEADER_EXCEPTION_MESSAGE",
    "HEADER_EXCEPTION_TRACEBACK",
    "HEADER_EXCEPTION_TYPE",
    "HEADER_FAILED_AT",
    "HEADER_ORIGINAL_OFFSET",
    "HEADER_ORIGINAL_PARTITION",
    "HEADER_ORIGINAL_SIZE",
    "HEADER_ORIGINAL_TIMESTAMP",
    "HEADER_ORIGINAL_TOPIC",
    "HEADER_REFERENCE",
    "HEADER_SERVICE",
    "DeadLetterAbortedError",
    "DecodeError",
    "ErrorClass",
    "ErrorHandler",
    "ProcessingOutcome",
    "classify_error",
    "dead_letter_headers",
    "exception_type_name",
]


class ErrorClass(StrEnum):
    """Whether trying the same message again may succeed."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"


#: The final states :meth:`ErrorHandler.handle_processing_error` reaches.
ProcessingOutcome = Outcome

_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
    *TOO_LARGE_ERRORS,
    ValidationError,
    ValueError,
    TypeError,
    KeyError,
)
_RETRYABLE_TYPES: tuple[type[BaseException], ...] = (
    RetryableError,
    TimeoutError,
    ConnectionError,
    *TRANSIENT_CLIENT_ERRORS,
)


def classify_error(exc: BaseException) -> ErrorClass:
    """Classify a handler failure.

    Explicit :class:`RetryableError`/:class:`PermanentError` win; then timeouts,
    connection errors and the clients' transient errors are retryable; schema
    violations (pydantic ``ValidationError``), ``ValueError`` (which covers JSON
    and Unicode decode failures), ``TypeError`` and ``KeyError`` are permanent;
    anything else is retryable, so an unknown failure gets the retry budget and
    then the dead-letter topic. An exception group is permanent when any member is.
    """
    if isinstance(exc, RetryableError):
        return ErrorClass.RETRYABLE
    if isinstance(exc, PermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, TOO_LARGE_ERRORS):
        return ErrorClass.PERMANENT
    if isinstance(exc, BaseExceptionGroup):
        classes = {classify_error(e) for e in exc.exceptions}
        return ErrorClass.PERMANENT if ErrorClass.PERMANENT in classes else ErrorClass.RETRYABLE
    if isinstance(exc, _RETRYABLE_TYPES):
        return ErrorClass.RETRYABLE
    if isinstance(exc, _PERMANENT_TYPES):
        return ErrorClass.PERMANENT
    return ErrorClass.RETRYABLE


class ErrorHandler:
    """Retries, then dead-letters, failed messages of one consumer flow (a chain step)."""

    def __init__(
        self,
        producer: MessageProducer | None,
        service_name: str,
        *,
        consumer_group: str | None = None,
        max_attempts: int = 3,
        backoff_initial_ms: int = 100,
        backoff_max_ms: int = 5000,
        dead_letter_enabled: bool = True,
        dead_letter_suffix: str = ".dlq",
        dead_letter_topic: str | None = None,
        metrics: object | None = None,
        classifier: Callable[[BaseException], ErrorClass] = classify_error,
        dlq_retry_backoff_max_s: float = 5.0,
        dlq_retry_backoff_initial_s: float = 0.1,
        sensor: Sensor | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_initial_ms < 0 or backoff_max_ms < 0:
            raise ValueError("backoff times must not be negative")
        if dead_letter_enabled and producer is None:
            raise ValueError("dead letters are enabled but no producer was given")
        if dead_letter_enabled and not dead_letter_topic and not dead_letter_suffix:
            raise ValueError("dead_letter_suffix is empty: dead letters would loop to the source")
        if dlq_retry_backoff_initial_s <= 0 or dlq_retry_backoff_max_s <= 0:
            raise ValueError("dead-letter retry backoff must be positive")
        self.producer = producer
        self.service_name = service_name
        self.consumer_group = consumer_group or "default"
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_ms / 1000
        self.backoff_max_s = backoff_max_ms / 1000
        self.dead_letter_enabled = dead_letter_enabled
        self.dead_letter_suffix = dead_letter_suffix
        self.dead_letter_topic_override = dead_letter_topic
        self.classifier = classifier
        if sensor is None and metrics is not None:
            sensor = metrics.for_flow(self.consumer_group)  # type: ignore[attr-defined]
        self.sensor = sensor or Sensor()
        self.dlq_retry_backoff_max_s = dlq_retry_backoff_max_s
        self.writer = (
            DeadLetterWriter(
                producer,
                service_name,
                self.consumer_group,
                retry_backoff_initial_s=min(dlq_retry_backoff_initial_s, dlq_retry_backoff_max_s),
                retry_backoff_max_s=dlq_retry_backoff_max_s,
            )
            if producer is not None
            else None
        )
        self._exponential = wait_exponential(
            multiplier=self.backoff_initial_s, max=self.backoff_max_s
        )
        self._wait_blocked = wait_exponential(
            multiplier=max(self.backoff_initial_s, 0.1), max=dlq_retry_backoff_max_s
        )
        self._stop = asyncio.Event()
        self._blocked = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------------ topics, state

    def dead_letter_topic_for(self, topic: str) -> str:
        """The dead-letter topic of messages from ``topic``."""
        return self.dead_letter_topic_override or f"{topic}{self.dead_letter_suffix}"

    @property
    def dead_letter_blocked(self) -> bool:
        """True while some failed message can be neither dead-lettered nor handled."""
        return self._blocked > 0 or (self.writer is not None and self.writer.blocked > 0)

    @property
    def dead_letter_write_failures(self) -> int:
        """Failed dead-letter writes so far (each is retried)."""
        return self.writer.write_failures if self.writer is not None else 0

    def stop_dead_letter_retries(self) -> None:
        """Stop waiting for blocked messages (at shutdown): they end uncommitted."""
        self._stop.set()
        if self.writer is not None:
            self.writer.stop_retries()

    def allow_dead_letter_retries(self) -> None:
        """Undo :meth:`stop_dead_letter_retries` (when the flow starts again)."""
        self._stop = asyncio.Event()
        if self.writer is not None:
            self.writer.allow_retries()

    def health(self) -> dict[str, object]:
        """State for a health report."""
        return {
            "dead_letter_blocked": self.dead_letter_blocked,
            "dead_lettered": self.dead_lettered,
            "dead_letter_write_failures": self.dead_letter_write_failures,
            "dead_letter_references": self.writer.references if self.writer else 0,
        }

    # ------------------------------------------------------------------ the step

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        """Run the batch; settle each failure (retries, dead letter) before going on."""
        start = 0
        while start < len(batch):
            await call_next(batch if start == 0 else batch[start:])
            try:
                failed = [m.outcome for m in batch].index(Outcome.FAILED, start)
            except ValueError:
                return
            await self.settle(batch[failed], call_next)
            if batch[failed].outcome is None:
                return  # stopped while settling: the rest stays unrun
            start = failed + 1

    async def settle(self, message: ConsumedMessage, call_next: Next) -> None:
        """Take a failed message to a final state, or leave it unrun when stopping."""
        error = message.error or RuntimeError("failed without an error")
        while True:
            self._failed(message, error)
            exhausted = (
                self.classifier(error) is ErrorClass.PERMANENT
                or message.attempts >= self.max_attempts
            )
            if exhausted and (self.dead_letter_enabled or message.decode_error is not None):
                break
            delay = self._blocked_wait(message) if exhausted else self._wait(message.attempts)
            if not await self._sleep(delay, blocked=exhausted):
                message.outcome, message.error = None, None
                return
            self.sensor.on_retry(message, error)
            message.outcome, message.error = None, None
            await call_next([message])
            if message.outcome is not Outcome.FAILED:
                return  # handled, or left unrun by a stop
            error = message.error or error
        await self._dead_letter(message, error)

    def _failed(self, message: ConsumedMessage, error: BaseException) -> None:
        if message.decode_error is not None:
            self.sensor.on_decode_failure(message)
        else:
            self.sensor.on_failure(message, error)
        logger.warning(
            "handler failed on %s (attempt %d of %d, %s: %s)",
            message.location(),
            message.attempts,
            self.max_attempts,
            type(error).__name__,
            str(error)[:500],
        )

    async def _dead_letter(self, message: ConsumedMessage, error: BaseException) -> None:
        try:
            await self.dead_letter(message, error, max(message.attempts, 1))
        except DeadLetterAbortedError:
            message.outcome, message.error = None, None
            return
        message.outcome = Outcome.DEAD_LETTERED
        message.error = error

    def _wait(self, attempts: int) -> float:
        return self._retry_wait(_attempt_state(attempts))

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff (initial, 2x, 4x, ...) plus up to ``initial`` of jitter, capped."""
        jitter = random.uniform(0, self.backoff_initial_s)
        return min(float(self._exponential(state)) + jitter, self.backoff_max_s)

    def _blocked_wait(self, message: ConsumedMessage) -> float:
        """Backoff of a message retried past its budget (dead letters disabled)."""
        logger.error(
            "%s failed %d time(s) and dead letters are disabled; it is not committed "
            "and is retried until it succeeds",
            message.location(),
            message.attempts,
        )
        return self._wait_blocked(_attempt_state(message.attempts - self.max_attempts + 1))

    async def _sleep(self, delay: float, *, blocked: bool = False) -> bool:
        """Sleep ``delay`` seconds; False when retries are stopped first."""
        if self._stop.is_set():
            return False
        if blocked:
            self._blocked += 1
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return True
        finally:
            if blocked:
                self._blocked -= 1
        return False

    # ------------------------------------------------------------------ direct API

    async def handle_processing_error(
        self,
        raw_message: ConsumedMessage,
        error: BaseException,
        processing_func: Callable[[], Awaitable[None]],
        commit_func: Callable[[], Awaitable[None]],
    ) -> Outcome:
        """Drive a message whose first attempt raised ``error`` to a final state.

        ``processing_func`` runs the handler once more; ``commit_func`` marks the
        message final and is awaited only after a successful retry or an
        acknowledged dead-letter write. ``error`` counts as the first attempt. A
        ``BaseException`` that is not an ``Exception`` is re-raised untouched.
        Raises :class:`DeadLetterAbortedError` when stopped before a final state.
        """
        if not isinstance(error, Exception):
            raise error

        async def attempt(batch: Batch) -> None:
            message = batch[0]
            message.attempts += 1
            try:
                await processing_func()
            except Exception as exc:
                message.outcome, message.error = Outcome.FAILED, exc
            else:
                message.outcome = Outcome.HANDLED

        raw_message.attempts = max(raw_message.attempts, 1)
        raw_message.outcome, raw_message.error = Outcome.FAILED, error
        await self.settle(raw_message, attempt)
        if raw_message.outcome is None:
            raise DeadLetterAbortedError(
                f"{raw_message.location()} still failing; retries stopped, not committed"
            ) from error
        await commit_func()
        return raw_message.outcome

    async def dead_letter(
        self, raw_message: ConsumedMessage, error: BaseException, attempts: int
    ) -> None:
        """Write the message to its dead-letter topic; return once acknowledged.

        With dead letters disabled nothing can finish the message: the call waits,
        uncommitted, until :meth:`stop_dead_letter_retries`, then raises
        :class:`DeadLetterAbortedError`.
        """
        if not self.dead_letter_enabled or self.writer is None:
            self._blocked += 1
            try:
                logger.error(
                    "%s must be dead-lettered (%s: %s) but dead letters are disabled; "
                    "it is not committed and the flow waits until it is stopped",
                    raw_message.location(),
                    type(error).__name__,
                    error,
                )
                await self._stop.wait()
            finally:
                self._blocked -= 1
            raise DeadLetterAbortedError(
                f"{raw_message.location()} cannot be dead-lettered (disabled); not committed"
            ) from error
        logger.error(
            "dead-lettering %s after %d attempt(s): %s (%s): %s",
            raw_message.location(),
            attempts,
            type(error).__name__,
            self.classifier(error).value,
            str(error)[:500],
        )
        await self.writer.write(
            lambda: self.dead_letter_topic_for(raw_message.topic), raw_message, error, attempts
        )
        self.dead_lettered += 1
        self.sensor.on_dead_letter(raw_message, error)


def _attempt_state(attempt: int) -> RetryCallState:
    """A tenacity call state at ``attempt``, for computing a wait outside a retry loop."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return state
