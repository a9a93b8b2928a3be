"""Writing a failed message to its dead-letter topic, in a form that always fits.

A dead letter keeps the original key, value and headers untouched and adds
``dlq.*`` headers saying where it came from and why it failed. When that is too
large for the broker, the error text is shortened (compact headers); when even
that does not fit, or the client could not read the record at all, a
*reference* is written instead: the source coordinates, the record's size, the
error and the head of the value, with ``dlq.reference: true``. The original
stays readable at its source offset, so nothing is lost and the partition moves
on.

A write is done once the broker acknowledged it. A write that fails (broker
away, topic refused) is retried with capped backoff until it succeeds or
retries are stopped (at shutdown); meanwhile the message is not committed and
its lane waits, by design: stop consuming rather than lose a message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
)

from core.streaming.clients import TOO_LARGE_ERRORS
from core.streaming.errors import ProducerFencedError, StreamingError
from core.streaming.infrastructure.consumed_message import (
    ConsumedMessage,
    reset_current_message,
    set_current_message,
)
from core.streaming.infrastructure.message_producer import MessageProducer

logger = logging.getLogger(__name__)

HEADER_ORIGINAL_TOPIC = "dlq.original.topic"
HEADER_ORIGINAL_PARTITION = "dlq.original.partition"
HEADER_ORIGINAL_OFFSET = "dlq.original.offset"
HEADER_ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
HEADER_ORIGINAL_SIZE = "dlq.original.size"
HEADER_CONSUMER_GROUP = "dlq.consumer.group"
HEADER_SERVICE = "dlq.service"
HEADER_EXCEPTION_TYPE = "dlq.exception.type"
HEADER_EXCEPTION_MESSAGE = "dlq.exception.message"
HEADER_EXCEPTION_TRACEBACK = "dlq.exception.traceback"
HEADER_ATTEMPTS = "dlq.attempts"
HEADER_FAILED_AT = "dlq.failed.at"
HEADER_REFERENCE = "dlq.reference"

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

#: Byte bounds of the free-text headers, and of what a reference keeps.
MAX_MESSAGE_BYTES = 1024
MAX_TRACEBACK_BYTES = 4096
COMPACT_MESSAGE_BYTES = 256
REFERENCE_VALUE_BYTES = 4096
REFERENCE_KEY_BYTES = 1024
_TRUNCATED = "...\n"


class DeadLetterAbortedError(StreamingError):
    """A failed message could be neither dead-lettered nor handled, and waiting stopped.

    Nothing was committed for it: it is delivered again after a restart.
    """


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
    reference: bool = False,
) -> list[tuple[str, bytes | None]]:
    """The headers of a dead letter: the original ones, then the ``dlq.*`` ones.

    ``compact`` leaves the traceback empty and shortens the message to
    ``COMPACT_MESSAGE_BYTES``; ``reference`` also leaves out the original headers
    and marks the record as a reference.
    """
    when = (failed_at or datetime.now(UTC)).astimezone(UTC)
    short = compact or reference
    trace = "" if short else "".join(traceback.format_exception(error))
    message_limit = COMPACT_MESSAGE_BYTES if short else MAX_MESSAGE_BYTES
    original = [] if reference else list(raw_message.headers)
    headers = [
        *original,
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
    if reference:
        headers.append((HEADER_REFERENCE, b"true"))
        headers.append((HEADER_ORIGINAL_SIZE, str(raw_message.record_size).encode()))
    return headers


def reference_value(raw_message: ConsumedMessage, error: BaseException) -> bytes:
    """The value of a reference dead letter: where the original is, and its head."""
    value = raw_message.raw_value or b""
    return orjson.dumps(
        {
            "reference": {
                "topic": raw_message.topic,
                "partition": raw_message.partition,
                "offset": raw_message.offset,
                "size": raw_message.record_size,
                "error": f"{type(error).__name__}: {str(error)[:COMPACT_MESSAGE_BYTES]}",
            },
            "value_head_b64": base64.b64encode(value[:REFERENCE_VALUE_BYTES]).decode(),
            "value_truncated": len(value) > REFERENCE_VALUE_BYTES,
        }
    )


class DeadLetterWriter:
    """Writes dead letters of one flow and knows whether one is stuck."""

    def __init__(
        self,
        producer: MessageProducer,
        service_name: str,
        consumer_group: str,
        *,
        retry_backoff_initial_s: float = 0.1,
        retry_backoff_max_s: float = 5.0,
    ) -> None:
        self.producer = producer
        self.service_name = service_name
        self.consumer_group = consumer_group
        self.retry_backoff_initial_s = retry_backoff_initial_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self._stop = asyncio.Event()
        self.blocked = 0
        self.write_failures = 0
        self.references = 0

    def stop_retries(self) -> None:
        """Stop waiting for failing writes (at shutdown): they end uncommitted."""
        self._stop.set()

    def allow_retries(self) -> None:
        """Undo :meth:`stop_retries` (when the flow starts again)."""
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """True after :meth:`stop_retries`."""
        return self._stop.is_set()

    async def write(
        self,
        topic_for: Callable[[], str],
        raw_message: ConsumedMessage,
        error: BaseException,
        attempts: int,
    ) -> None:
        """Write the dead letter of ``raw_message``; return once acknowledged.

        ``topic_for`` names the dead-letter topic, asked again before each try (a
        corrected setting takes effect). Raises :class:`DeadLetterAbortedError`
        when retries are stopped first.
        """
        counted = False
        last_error: BaseException | None = None

        def before_sleep(state: RetryCallState) -> None:
            nonlocal counted, last_error
            exc = state.outcome.exception() if state.outcome is not None else None
            last_error = exc
            self.write_failures += 1
            if not counted:
                counted = True
                self.blocked += 1
            logger.error(
                "dead-letter write of %s to %r failed (%s: %s); nothing is committed "
                "and the flow waits; retry %d",
                raw_message.location(),
                topic_for(),
                type(exc).__name__,
                exc,
                state.attempt_number,
            )

        retrying = AsyncRetrying(
            # A fenced transactional producer will never write again: no retry.
            retry=retry_if_exception_type(Exception)
            & retry_if_not_exception_type(ProducerFencedError),
            wait=wait_exponential(
                multiplier=self.retry_backoff_initial_s, max=self.retry_backoff_max_s
            ),
            sleep=self._sleep_or_stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:

            async def attempt() -> None:
                # The write belongs to the message (an exactly-once flow keeps it in the
                # message's transaction).
                token = set_current_message(raw_message)
                try:
                    await self._write_once(topic_for(), raw_message, error, attempts)
                finally:
                    reset_current_message(token)

            await retrying(attempt)
        except ProducerFencedError as exc:
            raise DeadLetterAbortedError(
                f"dead letter of {raw_message.location()} not written: its partition was "
                "taken over by a newer owner; not committed here"
            ) from exc
        except _Stopped:
            raise DeadLetterAbortedError(
                f"dead-letter write of {raw_message.location()} to {topic_for()!r} "
                "failed and retries were stopped; not committed"
            ) from last_error
        finally:
            if counted:
                self.blocked -= 1
        if counted:
            logger.warning(
                "dead-letter write of %s to %r succeeded", raw_message.location(), topic_for()
            )

    async def _sleep_or_stop(self, delay: float) -> None:
        if self._stop.is_set():
            raise _Stopped
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            return
        raise _Stopped

    async def _write_once(
        self, topic: str, raw_message: ConsumedMessage, error: BaseException, attempts: int
    ) -> None:
        if raw_message.decode_error is not None and raw_message.decode_error.startswith(
            "unreadable record"
        ):
            await self._write_reference(topic, raw_message, error, attempts)
            return
        common: dict[str, Any] = {
            "service_name": self.service_name,
            "consumer_group": self.consumer_group,
        }
        for compact in (False, True):
            headers = dead_letter_headers(raw_message, error, attempts, compact=compact, **common)
            try:
                await self.producer.send_raw(topic, raw_message.key, raw_message.raw_value, headers)
                return
            except TOO_LARGE_ERRORS as exc:
                logger.warning(
                    "dead letter of %s (%d bytes with headers) is too large%s: %s",
                    raw_message.location(),
                    raw_message.record_size,
                    "" if compact else "; retrying with compact error headers",
                    exc,
                )
        await self._write_reference(topic, raw_message, error, attempts)

    async def _write_reference(
        self, topic: str, raw_message: ConsumedMessage, error: BaseException, attempts: int
    ) -> None:
        headers = dead_letter_headers(
            raw_message,
            error,
            attempts,
            service_name=self.service_name,
            consumer_group=self.consumer_group,
            reference=True,
        )
        key = raw_message.key
        if key is not None and len(key) > REFERENCE_KEY_BYTES:
            key = key[:REFERENCE_KEY_BYTES]
        await self.producer.send_raw(topic, key, reference_value(raw_message, error), headers)
        self.references += 1
        logger.error(
            "%s cannot be dead-lettered whole; wrote a reference to it (the original "
            "stays at its source offset)",
            raw_message.location(),
        )


class _Stopped(Exception):
    """Retries were stopped while a write was failing."""
