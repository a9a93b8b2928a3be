"""Non-blocking retries: a failed message moves to a delayed retry topic, its partition flows on.

With ``retry_topics=[1, 10, 60]`` (seconds) a flow over ``orders`` gets three
retry topics, ``orders.retry.1`` .. ``orders.retry.3``, each consumed by a flow of
its own (group ``<group>.retry.<n>``) with the same handler, whose consumer holds
each partition until its head is due (:mod:`due_time_gate`). A message whose
handler fails with a retryable error is written to the next retry topic with the
headers below and its input is committed; the partition goes on at once. After
the last retry topic (or at once, for a permanent error) it is dead-lettered to
the original topic's dead-letter topic, with the usual ``dlq.*`` headers naming
the *original* record and the ``retry.*`` headers carrying every attempt.

What this gives up: per-key order. A later message with the same key can be
handled while an earlier one waits in a retry topic. Blocking retries (the
default) keep the order and block the partition instead.

Headers of a record in a retry topic (the original headers are kept):

* ``retry.attempt``: which retry topic (1..n) it is in;
* ``retry.due.ms``: when it is due, milliseconds since the epoch (wall clock);
* ``retry.original.topic`` / ``.partition`` / ``.offset`` / ``.timestamp``: the
  record as first consumed;
* ``retry.history``: JSON list, one entry per failed attempt: ``topic``,
  ``partition``, ``offset``, ``failed_at_ms``, ``error_type``, ``error``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
)

from core.streaming.clients import TOO_LARGE_ERRORS
from core.streaming.errors import ProducerFencedError
from core.streaming.infrastructure.consumed_message import (
    ConsumedMessage,
    Outcome,
    reset_current_message,
    set_current_message,
)
from core.streaming.infrastructure.due_time_gate import HEADER_DUE_MS, DueTimeGate
from core.streaming.reliability.dead_letter_writer import (
    DeadLetterAbortedError,
    exception_type_name,
)
from core.streaming.reliability.error_handler import ErrorClass, ErrorHandler
from core.streaming.reliability.steps import Next
from core.streaming.types import Headers

logger = logging.getLogger(__name__)

RETRY_PREFIX = "retry."
HEADER_ATTEMPT = "retry.attempt"
HEADER_ORIGINAL_TOPIC = "retry.original.topic"
HEADER_ORIGINAL_PARTITION = "retry.original.partition"
HEADER_ORIGINAL_OFFSET = "retry.original.offset"
HEADER_ORIGINAL_TIMESTAMP = "retry.original.timestamp"
HEADER_HISTORY = "retry.history"
__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_DUE_MS",
    "HEADER_HISTORY",
    "RetryTopicErrorHandler",
    "retry_topic_name",
]

_ERROR_TEXT_BYTES = 256
#: Write errors a retry cannot cure.
_FINAL_WRITE_ERRORS: tuple[type[BaseException], ...] = (*TOO_LARGE_ERRORS, ProducerFencedError)


def retry_topic_name(topic: str, level: int) -> str:
    """The ``level``-th retry topic of ``topic`` (levels start at 1)."""
    return f"{topic}.retry.{level}"


def _header(headers: Headers, name: str) -> bytes | None:
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


class _Origin:
    """Where a message was first consumed, read from its retry headers or itself."""

    def __init__(self, message: ConsumedMessage, from_headers: bool) -> None:
        headers = message.headers
        topic = _header(headers, HEADER_ORIGINAL_TOPIC) if from_headers else None
        if topic is None:
            self.topic = message.topic
            self.partition, self.offset = message.partition, message.offset
            self.timestamp = message.timestamp
            self.history: list[dict[str, Any]] = []
            return
        self.topic = topic.decode()
        self.partition = int(_header(headers, HEADER_ORIGINAL_PARTITION) or b"0")
        self.offset = int(_header(headers, HEADER_ORIGINAL_OFFSET) or b"0")
        self.timestamp = int(_header(headers, HEADER_ORIGINAL_TIMESTAMP) or b"0")
        try:
            history = orjson.loads(_header(headers, HEADER_HISTORY) or b"[]")
        except orjson.JSONDecodeError:
            history = []
        self.history = history if isinstance(history, list) else []


class RetryTopicErrorHandler(ErrorHandler):
    """The error step of a flow with retry topics (the main flow, level 0, or retry level n).

    Each hop is one attempt: a retryable failure goes to the next retry topic, a
    permanent one, or one after the last retry topic, to the dead-letter topic.
    """

    def __init__(
        self,
        producer: Any,
        service_name: str,
        *,
        delays_s: Sequence[float],
        level: int = 0,
        **options: Any,
    ) -> None:
        if not delays_s:
            raise ValueError("retry topics need at least one delay")
        if any(d <= 0 for d in delays_s):
            raise ValueError(f"retry delays must be positive, got {list(delays_s)}")
        if not 0 <= level <= len(delays_s):
            raise ValueError(f"level must be 0..{len(delays_s)}, got {level}")
        if producer is None:
            raise ValueError("retry topics need a producer")
        options["max_attempts"] = 1
        super().__init__(producer, service_name, **options)
        self.delays_s = list(delays_s)
        self.level = level
        self.gate: DueTimeGate | None = None
        self.scheduled = 0
        self.exhausted = 0

    def dead_letter_topic_for(self, topic: str) -> str:
        """The dead-letter topic of the original topic (not of a retry topic)."""
        return super().dead_letter_topic_for(self._original_name(topic))

    def _original_name(self, topic: str) -> str:
        if self.level == 0:
            return topic
        return topic.removesuffix(f".retry.{self.level}")

    async def settle(self, message: ConsumedMessage, call_next: Next) -> None:
        """Move a failed message on: to the next retry topic, or to the dead-letter topic."""
        error = message.error or RuntimeError("failed without an error")
        self._failed(message, error)
        permanent = message.decode_error is not None or (
            self.classifier(error) is ErrorClass.PERMANENT
        )
        level = self.level + 1
        if not permanent and level <= len(self.delays_s):
            try:
                await self._forward(message, error, level)
            except DeadLetterAbortedError:
                message.outcome, message.error = None, None
                return
            except TOO_LARGE_ERRORS as exc:
                logger.warning("%s does not fit its retry topic (%s)", message.location(), exc)
            else:
                message.outcome, message.error = Outcome.RETRY_SCHEDULED, error
                return
        if self.level > 0:
            self.exhausted += 1
        await self._dead_letter(message, error)

    async def _forward(self, message: ConsumedMessage, error: BaseException, level: int) -> None:
        now_ms = time.time_ns() // 1_000_000
        origin = _Origin(message, from_headers=self.level > 0)
        topic = retry_topic_name(origin.topic, level)
        history = [*origin.history, _entry(message, error, now_ms)]
        headers = [h for h in message.headers if not h[0].startswith(RETRY_PREFIX)]
        headers += [
            (HEADER_ATTEMPT, str(level).encode()),
            (HEADER_DUE_MS, str(now_ms + round(self.delays_s[level - 1] * 1000)).encode()),
            (HEADER_ORIGINAL_TOPIC, origin.topic.encode()),
            (HEADER_ORIGINAL_PARTITION, str(origin.partition).encode()),
            (HEADER_ORIGINAL_OFFSET, str(origin.offset).encode()),
            (HEADER_ORIGINAL_TIMESTAMP, str(origin.timestamp).encode()),
            (HEADER_HISTORY, orjson.dumps(history)),
        ]
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception)
            & retry_if_not_exception_type(_FINAL_WRITE_ERRORS),
            wait=wait_exponential(multiplier=0.1, max=self.dlq_retry_backoff_max_s),
            sleep=self._sleep_or_abort,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._send(topic, message, headers)
        except ProducerFencedError as exc:
            raise DeadLetterAbortedError(f"{message.location()}: partition taken over") from exc
        self.scheduled += 1
        self.sensor.on_retry_scheduled(message, topic)
        logger.info(
            "%s failed (%s); retry %d of %d in %s s via %s",
            message.location(),
            type(error).__name__,
            level,
            len(self.delays_s),
            f"{self.delays_s[level - 1]:g}",
            topic,
        )

    async def _send(self, topic: str, message: ConsumedMessage, headers: Headers) -> None:
        producer = self.producer
        assert producer is not None
        token = set_current_message(message)  # an exactly-once flow keeps it in its transaction
        try:
            await producer.send_raw(topic, message.key, message.raw_value, headers)
        except Exception as exc:
            if not isinstance(exc, _FINAL_WRITE_ERRORS):
                logger.error("write of %s to %s failed (%s)", message.location(), topic, exc)
            raise
        finally:
            reset_current_message(token)

    async def _sleep_or_abort(self, delay: float) -> None:
        if not await self._sleep(delay, blocked=True):
            raise DeadLetterAbortedError("stopped while a retry-topic write was failing")

    async def dead_letter(
        self, raw_message: ConsumedMessage, error: BaseException, attempts: int
    ) -> None:
        """Dead-letter naming the original record, with every attempt in the headers."""
        if self.level == 0:
            await super().dead_letter(raw_message, error, attempts)
            return
        origin = _Origin(raw_message, from_headers=True)
        history = [*origin.history, _entry(raw_message, error, time.time_ns() // 1_000_000)]
        headers = [(k, v) for k, v in raw_message.headers if k != HEADER_HISTORY]
        headers.append((HEADER_HISTORY, orjson.dumps(history)))
        original = ConsumedMessage.of(
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            key=raw_message.key,
            value=raw_message.value,
            raw_value=raw_message.raw_value,
            headers=headers,
            timestamp=origin.timestamp,
            decode_error=raw_message.decode_error,
        )
        await super().dead_letter(original, error, len(history))

    def health(self) -> dict[str, object]:
        """The dead-letter state plus the retry topics' own."""
        report = super().health()
        report["retry"] = {
            "level": self.level,
            "delays_s": self.delays_s,
            "scheduled": self.scheduled,
            "dead_lettered_after_last_retry": self.exhausted,
            **(self.gate.health() if self.gate is not None else {}),
        }
        return report


def _entry(message: ConsumedMessage, error: BaseException, at_ms: int) -> dict[str, Any]:
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "failed_at_ms": at_ms,
        "error_type": exception_type_name(error),
        "error": str(error)[:_ERROR_TEXT_BYTES],
    }
