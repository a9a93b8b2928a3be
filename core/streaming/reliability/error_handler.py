"""What happens to a message whose handler failed: classify, retry, dead-letter.

Every failure is classified (:func:`classify_error`). A retryable one is retried
with exponential backoff and jitter up to ``max_attempts`` attempts in total; a
permanent one stops retrying at once. A message that still fails is written to
its dead-letter topic with its original key and value bytes untouched and with
headers saying where it came from and why it failed; only once the broker has
acknowledged that write is the message's offset committed.

Dead-letter topic rule: ``dead_letter_topic`` when given (one topic for every
source topic of the flow), otherwise ``<original topic><dead_letter_suffix>``,
for example ``orders`` -> ``orders.dlq``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from core.streaming.clients import TRANSIENT_CLIENT_ERRORS
from core.streaming.errors import (
    MessageTooLargeError,
    PermanentError,
    RetryableError,
    StreamingError,
)
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.metrics_collector import DEFAULT_GROUP, MetricsCollector

logger = logging.getLogger(__name__)

HEADER_ORIGINAL_TOPIC = "dlq.original.topic"
HEADER_ORIGINAL_PARTITION = "dlq.original.partition"
HEADER_ORIGINAL_OFFSET = "dlq.original.offset"
HEADER_ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
HEADER_CONSUMER_GROUP = "dlq.consumer.group"
HEADER_SERVICE = "dlq.service"
HEADER_EXCEPTION_TYPE = "dlq.exception.type"
HEADER_EXCEPTION_MESSAGE = "dlq.exception.message"
HEADER_EXCEPTION_TRACEBACK = "dlq.exception.traceback"
HEADER_ATTEMPTS = "dlq.attempts"
HEADER_FAILED_AT = "dlq.failed.at"

#: Every header a dead letter carries after the original message's own headers.
DEAD_LETTER_HEADERS: tuple[str, ...] = (
    HEADER_ORIGINAL_TOPIC,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_CONSUMER_GROUP,
    HEADER_SERVICE,
    HEADER_EXCEPTION_TYPE,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TRACEBACK,
    HEADER_ATTEMPTS,
    HEADER_FAILED_AT,
)

#: Byte bounds of the free-text headers.
MAX_MESSAGE_BYTES = 1024
MAX_TRACEBACK_BYTES = 4096
COMPACT_MESSAGE_BYTES = 256
_TRUNCATED = "...\n"


class ErrorClass(StrEnum):
    """Whether trying the same message again may succeed."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"


class ProcessingOutcome(StrEnum):
    """The final state :meth:`ErrorHandler.handle_processing_error` reached."""

    HANDLED = "handled"
    """A retry succeeded; the message was committed."""
    DEAD_LETTERED = "dead_lettered"
    """The message was written to its dead-letter topic, then committed."""


class DecodeError(PermanentError):
    """A message's bytes are not a decodable event; retrying cannot help."""


class DeadLetterAbortedError(StreamingError):
    """A failed message could not be finished and waiting for it was stopped.

    Raised by :meth:`ErrorHandler.handle_processing_error` and
    :meth:`ErrorHandler.dead_letter` after :meth:`ErrorHandler.stop_dead_letter_retries`
    while the message was neither handled nor dead-lettered. Nothing was
    committed for it: it is delivered again after a restart.
    """


_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
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
    if isinstance(exc, BaseExceptionGroup):
        classes = {classify_error(e) for e in exc.exceptions}
        return ErrorClass.PERMANENT if ErrorClass.PERMANENT in classes else ErrorClass.RETRYABLE
    if isinstance(exc, _RETRYABLE_TYPES):
        return ErrorClass.RETRYABLE
    if isinstance(exc, _PERMANENT_TYPES):
        return ErrorClass.PERMANENT
    return ErrorClass.RETRYABLE


def exception_type_name(exc: BaseException) -> str:
    """``module.QualName`` of an exception's class (no module for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _head_bytes(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def _tail_bytes(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    marker = _TRUNCATED.encode()
    tail = data[len(data) - (limit - len(marker)) :].decode("utf-8", "ignore").encode("utf-8")
    return marker + tail


def dead_letter_headers(
    raw_message: ConsumedMessage,
    error: BaseException,
    attempts: int,
    *,
    service_name: str,
    consumer_group: str,
    failed_at: datetime | None = None,
    compact: bool = False,
) -> list[tuple[str, bytes | None]]:
    """The headers of a dead letter: the original ones, then the ``dlq.*`` ones.

    ``compact`` leaves the traceback empty and shortens the message to
    ``COMPACT_MESSAGE_BYTES``, for records too large to carry the full text.
    """
    when = (failed_at or datetime.now(UTC)).astimezone(UTC)
    trace = "" if compact else "".join(traceback.format_exception(error))
    message_limit = COMPACT_MESSAGE_BYTES if compact else MAX_MESSAGE_BYTES
    return [
        *raw_message.headers,
        (HEADER_ORIGINAL_TOPIC, raw_message.topic.encode()),
        (HEADER_ORIGINAL_PARTITION, str(raw_message.partition).encode()),
        (HEADER_ORIGINAL_OFFSET, str(raw_message.offset).encode()),
        (HEADER_ORIGINAL_TIMESTAMP, str(raw_message.timestamp).encode()),
        (HEADER_CONSUMER_GROUP, consumer_group.encode()),
        (HEADER_SERVICE, service_name.encode()),
        (HEADER_EXCEPTION_TYPE, exception_type_name(error).encode()),
        (HEADER_EXCEPTION_MESSAGE, _head_bytes(str(error), message_limit)),
        (HEADER_EXCEPTION_TRACEBACK, _tail_bytes(trace, MAX_TRACEBACK_BYTES)),
        (HEADER_ATTEMPTS, str(attempts).encode()),
        (HEADER_FAILED_AT, when.isoformat(timespec="milliseconds").encode()),
    ]


class ErrorHandler:
    """Retries, dead-letters and then commits failed messages of one consumer flow.

    A message is committed only in a final state: handled by a retry, or written
    to the dead-letter topic with the broker's acknowledgement. When that write
    fails (broker down, topic refused) it is retried with backoff capped at
    ``dlq_retry_backoff_max_s`` until it succeeds, the task is cancelled, or
    :meth:`stop_dead_letter_retries` is called; meanwhile nothing is committed and
    the flow stops progressing on that message, by design: stop consuming rather
    than lose a message. :attr:`dead_letter_blocked` reports that state.

    With ``dead_letter_enabled=False`` there is no dead-letter topic, and a
    message that used up its retry budget is neither committed nor dropped: the
    handler keeps retrying it with backoff capped at ``dlq_retry_backoff_max_s``,
    logging an error on each failure and counting each retry, until it succeeds
    (then it is committed and the outcome is ``HANDLED``), the task is cancelled,
    or :meth:`stop_dead_letter_retries` is called (then
    :class:`DeadLetterAbortedError`). The flow blocks on that message, and
    :attr:`dead_letter_blocked` is true meanwhile, so health reports show it.
    """

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
        metrics: MetricsCollector | None = None,
        classifier: Callable[[BaseException], ErrorClass] = classify_error,
        dlq_retry_backoff_max_s: float = 5.0,
        dlq_retry_backoff_initial_s: float = 0.1,
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
        self.consumer_group = consumer_group or DEFAULT_GROUP
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_ms / 1000
        self.backoff_max_s = backoff_max_ms / 1000
        self.dead_letter_enabled = dead_letter_enabled
        self.dead_letter_suffix = dead_letter_suffix
        self.dead_letter_topic_override = dead_letter_topic
        self.metrics = metrics
        self.classifier = classifier
        self.dlq_retry_backoff_initial_s = min(dlq_retry_backoff_initial_s, dlq_retry_backoff_max_s)
        self.dlq_retry_backoff_max_s = dlq_retry_backoff_max_s
        self._exponential = wait_exponential(
            multiplier=self.backoff_initial_s, max=self.backoff_max_s
        )
        self._stop_retries = asyncio.Event()
        self._blocked = 0
        self.dead_lettered = 0
        self.dead_letter_write_failures = 0

    # ------------------------------------------------------------------ topics, state

    def dead_letter_topic_for(self, topic: str) -> str:
        """The dead-letter topic of messages from ``topic``."""
        return self.dead_letter_topic_override or f"{topic}{self.dead_letter_suffix}"

    @property
    def dead_letter_blocked(self) -> bool:
        """True while some failed message can be neither dead-lettered nor handled."""
        return self._blocked > 0

    def stop_dead_letter_retries(self) -> None:
        """Stop waiting for blocked messages (at shutdown): they end uncommitted.

        Each blocked call raises :class:`DeadLetterAbortedError`; later failures
        raise it after one attempt instead of retrying.
        """
        self._stop_retries.set()

    def allow_dead_letter_retries(self) -> None:
        """Undo :meth:`stop_dead_letter_retries` (when the flow starts again)."""
        self._stop_retries = asyncio.Event()

    def health(self) -> dict[str, Any]:
        """State for a health report."""
        return {
            "dead_letter_blocked": self.dead_letter_blocked,
            "blocked_messages": self._blocked,
            "dead_lettered": self.dead_lettered,
            "dead_letter_write_failures": self.dead_letter_write_failures,
        }

    # ------------------------------------------------------------------ retries

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff (initial, 2x, 4x, ...) plus up to ``initial`` of jitter, capped."""
        jitter = random.uniform(0, self.backoff_initial_s)
        return min(self._exponential(state) + jitter, self.backoff_max_s)

    def _is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, Exception) and self.classifier(exc) is ErrorClass.RETRYABLE

    def _count_retry(self, topic: str, exc: BaseException | None) -> None:
        if self.metrics is not None:
            name = type(exc).__name__ if exc is not None else "error"
            self.metrics.record_retry(topic, name, consumer_group=self.consumer_group)

    async def handle_processing_error(
        self,
        raw_message: ConsumedMessage,
        error: BaseException,
        processing_func: Callable[[], Awaitable[None]],
        commit_func: Callable[[], Awaitable[None]],
    ) -> ProcessingOutcome:
        """Drive a message whose first attempt raised ``error`` to a final state.

        ``processing_func`` runs the handler once more; ``commit_func`` marks the
        message final and is awaited only after a successful retry or an
        acknowledged dead-letter write. ``error`` counts as the first of
        ``max_attempts`` attempts. A ``BaseException`` that is not an
        ``Exception`` (cancellation) is re-raised untouched.
        """
        if not isinstance(error, Exception):
            raise error
        topic = raw_message.topic
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise error
            await processing_func()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            self._count_retry(topic, exc)
            logger.warning(
                "handler failed on %s (attempt %d of %d, %s: %s); retrying",
                raw_message.location(),
                state.attempt_number,
                self.max_attempts,
                type(exc).__name__,
                exc,
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._retry_wait,
            retry=retry_if_exception(self._is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            await retrying(attempt)
        except Exception as exc:
            last_error: Exception = exc
        else:
            await commit_func()
            return ProcessingOutcome.HANDLED

        if not self.dead_letter_enabled:
            await self._retry_until_handled(raw_message, last_error, processing_func, attempts)
            await commit_func()
            return ProcessingOutcome.HANDLED

        logger.error(
            "dead-lettering %s after %d attempt(s): %s (%s): %s",
            raw_message.location(),
            attempts,
            type(last_error).__name__,
            self.classifier(last_error).value,
            last_error,
        )
        await self.dead_letter(raw_message, last_error, attempts)
        await commit_func()
        return ProcessingOutcome.DEAD_LETTERED

    async def _wait_or_stop(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True when woken by :meth:`stop_dead_letter_retries`."""
        if self._stop_retries.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop_retries.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _retry_until_handled(
        self,
        raw_message: ConsumedMessage,
        error: Exception,
        processing_func: Callable[[], Awaitable[None]],
        attempts: int,
    ) -> None:
        """With no dead-letter topic: retry with capped backoff until success or stop."""
        delay = max(self.backoff_initial_s, self.dlq_retry_backoff_initial_s)
        self._blocked += 1
        try:
            while True:
                logger.error(
                    "%s failed %d time(s) and dead letters are disabled; it is not "
                    "committed and is retried in %.2f s (%s: %s)",
                    raw_message.location(),
                    attempts,
                    delay,
                    type(error).__name__,
                    error,
                )
                if await self._wait_or_stop(delay):
                    raise DeadLetterAbortedError(
                        f"{raw_message.location()} still failing after {attempts} attempt(s); "
                        "retries stopped, not committed"
                    ) from error
                delay = min(delay * 2, self.dlq_retry_backoff_max_s)
                self._count_retry(raw_message.topic, error)
                attempts += 1
                try:
                    await processing_func()
                except Exception as exc:
                    error = exc
                else:
                    return
        finally:
            self._blocked -= 1

    # ------------------------------------------------------------------ dead letters

    async def _block_without_dead_letters(
        self, raw_message: ConsumedMessage, error: BaseException
    ) -> NoReturn:
        """With dead letters disabled, hold the message uncommitted until retries stop."""
        self._blocked += 1
        try:
            logger.error(
                "%s must be dead-lettered (%s: %s) but dead letters are disabled; "
                "it is not committed and the flow waits until it is stopped",
                raw_message.location(),
                type(error).__name__,
                error,
            )
            await self._stop_retries.wait()
        finally:
            self._blocked -= 1
        raise DeadLetterAbortedError(
            f"{raw_message.location()} cannot be dead-lettered (disabled); not committed"
        ) from error

    async def dead_letter(
        self, raw_message: ConsumedMessage, error: BaseException, attempts: int
    ) -> None:
        """Write the message's original bytes and error headers to its dead-letter topic.

        Returns once the broker acknowledged the write. A failing write is retried
        (see the class docstring); :class:`DeadLetterAbortedError` when retries are
        stopped first. With dead letters disabled nothing can finish the message:
        the call waits, uncommitted, until :meth:`stop_dead_letter_retries`, then
        raises :class:`DeadLetterAbortedError`.
        """
        if not self.dead_letter_enabled or self.producer is None:
            await self._block_without_dead_letters(raw_message, error)
        headers = dead_letter_headers(
            raw_message,
            error,
            attempts,
            service_name=self.service_name,
            consumer_group=self.consumer_group,
        )
        compact = False
        delay = self.dlq_retry_backoff_initial_s
        failures = 0
        try:
            while True:
                topic = self.dead_letter_topic_for(raw_message.topic)
                failure: Exception
                try:
                    await self.producer.send_raw(
                        topic, raw_message.key, raw_message.raw_value, headers
                    )
                except MessageTooLargeError as exc:
                    if not compact:
                        logger.warning(
                            "dead letter of %s is too large with its traceback; "
                            "sending it with compact error headers (%s)",
                            raw_message.location(),
                            exc,
                        )
                        compact = True
                        headers = dead_letter_headers(
                            raw_message,
                            error,
                            attempts,
                            service_name=self.service_name,
                            consumer_group=self.consumer_group,
                            compact=True,
                        )
                        continue
                    failure = exc
                except Exception as exc:
                    failure = exc
                else:
                    break
                failures += 1
                if failures == 1:
                    self._blocked += 1
                delay = await self._after_failed_write(raw_message, topic, failure, failures, delay)
        finally:
            if failures:
                self._blocked -= 1
        if failures:
            logger.warning(
                "dead-letter write of %s to %r succeeded after %d failure(s)",
                raw_message.location(),
                topic,
                failures,
            )
        self.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.record_dead_letter(
                raw_message.topic, type(error).__name__, consumer_group=self.consumer_group
            )

    async def _after_failed_write(
        self,
        raw_message: ConsumedMessage,
        topic: str,
        exc: Exception,
        failures: int,
        delay: float,
    ) -> float:
        """Log a failed dead-letter write, wait ``delay``, and return the next delay.

        Raises :class:`DeadLetterAbortedError` when retries are stopped.
        """
        self.dead_letter_write_failures += 1
        logger.error(
            "dead-letter write of %s to %r failed (%s: %s); nothing is committed "
            "and the flow waits; retry %d in %.2f s",
            raw_message.location(),
            topic,
            type(exc).__name__,
            exc,
            failures,
            delay,
        )
        if await self._wait_or_stop(delay):
            raise DeadLetterAbortedError(
                f"dead-letter write of {raw_message.location()} to {topic!r} "
                "failed and retries were stopped; not committed"
            ) from exc
        return min(delay * 2, self.dlq_retry_backoff_max_s)
