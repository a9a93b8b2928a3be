"""ErrorHandler: classification, retries, dead letters, blocking when they cannot be written.

A real ``MessageProducer`` runs on the embedded in-memory broker (one per test,
topics created explicitly so a missing dead-letter topic is refused); the same
behaviour against real Kafka is in ``tests/integration/reliability/test_dead_letters_kafka.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from core.config.settings import RedpandaSettings
from core.streaming.embedded import drop_broker, reset_broker
from core.streaming.errors import (
    BrokerUnavailableError,
    MessageTooLargeError,
    PermanentError,
    RedisUnavailableError,
    RetryableError,
)
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.error_handler import (
    DEAD_LETTER_HEADERS,
    HEADER_ATTEMPTS,
    HEADER_CONSUMER_GROUP,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TRACEBACK,
    HEADER_EXCEPTION_TYPE,
    HEADER_FAILED_AT,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_SERVICE,
    DeadLetterAbortedError,
    DecodeError,
    ErrorClass,
    ErrorHandler,
    ProcessingOutcome,
    classify_error,
)
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.types import Headers, Record

# --------------------------------------------------------------------------- broker


class Bus:
    """An embedded broker of this test alone (no auto-created topics) and a producer on it."""

    def __init__(self) -> None:
        self.url = f"memory://test-{uuid4().hex}"
        self.broker = reset_broker(self.url, auto_create_topics=False)
        self.broker.create_topic("orders.dlq", 1)
        self.producer = MessageProducer(RedpandaSettings(bootstrap_servers=self.url), "svc")

    def records(self, topic: str = "orders.dlq") -> list[Record]:
        if topic not in self.broker.topics():
            return []
        return self.broker.records(topic)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    env = Bus()
    await env.producer.start()
    yield env
    await env.producer.stop()
    drop_broker(env.url)


def make_handler(bus: Bus, **kwargs: Any) -> tuple[ErrorHandler, MetricsCollector]:
    metrics = MetricsCollector("svc", consumer_group="g1")
    options: dict[str, Any] = {
        "consumer_group": "g1",
        "max_attempts": 3,
        "backoff_initial_ms": 1,
        "backoff_max_ms": 5,
        "metrics": metrics,
        "dlq_retry_backoff_initial_s": 0.005,
        "dlq_retry_backoff_max_s": 0.02,
    }
    options.update(kwargs)
    return ErrorHandler(bus.producer, "svc", **options), metrics


def message(
    *,
    value: bytes | None = b'{"id":"e1","type":"t","data":{}}',
    key: bytes | None = b"k1",
    headers: Headers = (("event-id", b"e1"), ("x-bin", b"\x00\xff")),
) -> ConsumedMessage:
    decoded = None
    error = None
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        error = str(exc)
    return ConsumedMessage.of(
        topic="orders",
        partition=2,
        offset=41,
        key=key,
        value=decoded,
        raw_value=value,
        headers=headers,
        timestamp=1_700_000_000_123,
        decode_error=error,
    )


class Calls:
    """A processing function failing with the given errors in turn, then succeeding."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)


class Commit:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


def header_map(record: Record) -> dict[str, bytes]:
    return dict(record.headers)


async def wait_until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- classification


class _Model(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"n": "nope"})
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a ValidationError")


class _Unknown(Exception):
    pass


class _RetryableValue(RetryableError, ValueError):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RetryableError("x"), ErrorClass.RETRYABLE),
        (TimeoutError(), ErrorClass.RETRYABLE),
        (ConnectionError(), ErrorClass.RETRYABLE),
        (ConnectionRefusedError(), ErrorClass.RETRYABLE),
        (BrokerUnavailableError(), ErrorClass.RETRYABLE),
        (RedisUnavailableError(), ErrorClass.RETRYABLE),
        (_RetryableValue(), ErrorClass.RETRYABLE),
        (PermanentError("x"), ErrorClass.PERMANENT),
        (MessageTooLargeError("x"), ErrorClass.PERMANENT),
        (DecodeError("x"), ErrorClass.PERMANENT),
        (_validation_error(), ErrorClass.PERMANENT),
        (ValueError(), ErrorClass.PERMANENT),
        (json.JSONDecodeError("bad", "doc", 0), ErrorClass.PERMANENT),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), ErrorClass.PERMANENT),
        (TypeError(), ErrorClass.PERMANENT),
        (KeyError("k"), ErrorClass.PERMANENT),
        (RuntimeError(), ErrorClass.RETRYABLE),
        (_Unknown(), ErrorClass.RETRYABLE),
        (ExceptionGroup("g", [TimeoutError(), ValueError()]), ErrorClass.PERMANENT),
        (ExceptionGroup("g", [TimeoutError(), RuntimeError()]), ErrorClass.RETRYABLE),
    ],
)
def test_classification_table(exc: BaseException, expected: ErrorClass) -> None:
    assert classify_error(exc) is expected


def test_transient_client_errors_are_retryable() -> None:
    from core.streaming.clients import TRANSIENT_CLIENT_ERRORS

    for cls in TRANSIENT_CLIENT_ERRORS:
        assert classify_error(cls("x")) is ErrorClass.RETRYABLE, cls


# --------------------------------------------------------------------------- retries


async def test_retry_succeeds_then_commits(bus: Bus) -> None:
    handler, metrics = make_handler(bus)
    processing, commit = Calls(), Commit()
    outcome = await handler.handle_processing_error(
        message(), TimeoutError("slow"), processing, commit
    )
    assert outcome is ProcessingOutcome.HANDLED
    assert processing.count == 1
    assert commit.count == 1
    assert bus.records() == []
    assert metrics.snapshot()["retries"] == 1
    assert metrics.snapshot()["dead_lettered"] == 0


async def test_retry_budget_counts_the_first_failure_then_dead_letters(bus: Bus) -> None:
    handler, metrics = make_handler(bus, max_attempts=4)
    processing = Calls(TimeoutError("a"), TimeoutError("b"), ConnectionError("c"))
    commit = Commit()
    outcome = await handler.handle_processing_error(
        message(), TimeoutError("first"), processing, commit
    )
    assert outcome is ProcessingOutcome.DEAD_LETTERED
    assert processing.count == 3  # 4 attempts in total, the first was the caller's
    assert commit.count == 1
    [record] = bus.records()
    assert record.topic == "orders.dlq"
    headers = header_map(record)
    assert headers[HEADER_ATTEMPTS] == b"4"
    assert headers[HEADER_EXCEPTION_TYPE] == b"ConnectionError"
    assert headers[HEADER_EXCEPTION_MESSAGE] == b"c"
    snap = metrics.snapshot()
    assert snap["retries"] == 3
    assert snap["dead_lettered"] == 1


async def test_permanent_error_goes_straight_to_dead_letters(bus: Bus) -> None:
    handler, metrics = make_handler(bus)
    processing, commit = Calls(), Commit()
    outcome = await handler.handle_processing_error(
        message(), PermanentError("bad order"), processing, commit
    )
    assert outcome is ProcessingOutcome.DEAD_LETTERED
    assert processing.count == 0
    assert commit.count == 1
    assert header_map(bus.records()[0])[HEADER_ATTEMPTS] == b"1"
    assert metrics.snapshot()["retries"] == 0


async def test_permanent_error_during_retries_stops_at_once(bus: Bus) -> None:
    handler, metrics = make_handler(bus, max_attempts=5)
    processing = Calls(KeyError("missing"), TimeoutError("never reached"))
    commit = Commit()
    outcome = await handler.handle_processing_error(
        message(), TimeoutError("first"), processing, commit
    )
    assert outcome is ProcessingOutcome.DEAD_LETTERED
    assert processing.count == 1
    headers = header_map(bus.records()[0])
    assert headers[HEADER_ATTEMPTS] == b"2"
    assert headers[HEADER_EXCEPTION_TYPE] == b"KeyError"
    assert metrics.snapshot()["retries"] == 1


async def test_single_attempt_budget_dead_letters_without_retry(bus: Bus) -> None:
    handler, _ = make_handler(bus, max_attempts=1)
    processing, commit = Calls(), Commit()
    outcome = await handler.handle_processing_error(message(), TimeoutError(), processing, commit)
    assert outcome is ProcessingOutcome.DEAD_LETTERED
    assert processing.count == 0


async def test_cancellation_passed_as_error_is_reraised(bus: Bus) -> None:
    handler, _ = make_handler(bus)
    commit = Commit()
    with pytest.raises(asyncio.CancelledError):
        await handler.handle_processing_error(message(), asyncio.CancelledError(), Calls(), commit)
    assert commit.count == 0
    assert bus.records() == []


async def test_custom_classifier_is_used(bus: Bus) -> None:
    handler, _ = make_handler(bus, classifier=lambda exc: ErrorClass.PERMANENT)
    processing = Calls()
    await handler.handle_processing_error(message(), TimeoutError(), processing, Commit())
    assert processing.count == 0


# --------------------------------------------------------------------------- dead letters


def _raise_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("é" * 2000)
    _raise_deep(depth - 1)


async def test_dead_letter_keeps_bytes_and_carries_every_header(bus: Bus) -> None:
    handler, _ = make_handler(bus)
    raw = b"\xff\xfe not json"
    msg = message(value=raw, key=None)
    assert not msg.is_decodable
    try:
        _raise_deep(60)
    except ValueError as exc:
        error = exc
    await handler.dead_letter(msg, error, attempts=1)
    [record] = bus.records()
    assert record.key is None
    assert record.value == raw
    assert list(record.headers[:2]) == [("event-id", b"e1"), ("x-bin", b"\x00\xff")]
    names = [name for name, _ in record.headers[2:]]
    assert names == list(DEAD_LETTER_HEADERS)
    headers = header_map(record)
    assert headers[HEADER_ORIGINAL_TOPIC] == b"orders"
    assert headers[HEADER_ORIGINAL_PARTITION] == b"2"
    assert headers[HEADER_ORIGINAL_OFFSET] == b"41"
    assert headers[HEADER_ORIGINAL_TIMESTAMP] == b"1700000000123"
    assert headers[HEADER_CONSUMER_GROUP] == b"g1"
    assert headers[HEADER_SERVICE] == b"svc"
    assert headers[HEADER_EXCEPTION_TYPE] == b"ValueError"
    assert len(headers[HEADER_EXCEPTION_MESSAGE]) <= 1024
    assert headers[HEADER_EXCEPTION_MESSAGE].decode("utf-8").startswith("éé")
    trace = headers[HEADER_EXCEPTION_TRACEBACK]
    assert len(trace) <= 4096
    text = trace.decode("utf-8")
    assert text.startswith("...")
    assert "_raise_deep" in text and "ValueError" in text
    failed_at = datetime.fromisoformat(headers[HEADER_FAILED_AT].decode())
    assert failed_at.utcoffset() == timedelta(0)
    for _, value in record.headers:
        assert isinstance(value, bytes)


async def test_exception_type_of_framework_errors_is_qualified(bus: Bus) -> None:
    handler, _ = make_handler(bus)
    await handler.dead_letter(message(), DecodeError("bad"), attempts=1)
    assert (
        header_map(bus.records()[0])[HEADER_EXCEPTION_TYPE] == b"core.streaming.errors.DecodeError"
    )


async def test_dead_letter_topic_rule(bus: Bus) -> None:
    handler, _ = make_handler(bus)
    assert handler.dead_letter_topic_for("orders") == "orders.dlq"
    suffixed, _ = make_handler(bus, dead_letter_suffix="-dead")
    assert suffixed.dead_letter_topic_for("orders") == "orders-dead"
    fixed, _ = make_handler(bus, dead_letter_topic="all.dlq")
    assert fixed.dead_letter_topic_for("orders") == "all.dlq"
    assert fixed.dead_letter_topic_for("ticks") == "all.dlq"


async def test_configuration_errors(bus: Bus) -> None:
    with pytest.raises(ValueError):
        ErrorHandler(None, "svc")
    ErrorHandler(None, "svc", dead_letter_enabled=False)
    with pytest.raises(ValueError):
        make_handler(bus, max_attempts=0)
    with pytest.raises(ValueError):
        make_handler(bus, dead_letter_suffix="")


async def test_refused_dead_letter_topic_blocks_without_commit_until_created(bus: Bus) -> None:
    handler, metrics = make_handler(bus, dead_letter_suffix=".missing")
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), PermanentError("bad"), Calls(), commit)
    )
    await wait_until(lambda: handler.dead_letter_write_failures >= 3)
    assert handler.dead_letter_blocked
    assert commit.count == 0
    assert not task.done()
    assert metrics.snapshot()["dead_lettered"] == 0

    bus.broker.create_topic("orders.missing", 1)
    assert await asyncio.wait_for(task, 5) is ProcessingOutcome.DEAD_LETTERED
    assert commit.count == 1
    assert not handler.dead_letter_blocked
    assert metrics.snapshot()["dead_lettered"] == 1
    assert len(bus.records("orders.missing")) == 1


async def test_invalid_dead_letter_topic_blocks_until_override_fixed(bus: Bus) -> None:
    handler, _ = make_handler(bus, dead_letter_topic="bad topic!")
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), ValueError("x"), Calls(), commit)
    )
    await wait_until(lambda: handler.dead_letter_write_failures >= 2)
    assert handler.dead_letter_blocked and commit.count == 0
    handler.dead_letter_topic_override = "orders.dlq"
    assert await asyncio.wait_for(task, 5) is ProcessingOutcome.DEAD_LETTERED
    assert len(bus.records()) == 1
    assert commit.count == 1


async def test_stopping_retries_aborts_without_commit(bus: Bus) -> None:
    handler, _ = make_handler(
        bus,
        dead_letter_suffix=".missing",
        dlq_retry_backoff_initial_s=10,
        dlq_retry_backoff_max_s=10,
    )
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), PermanentError("bad"), Calls(), commit)
    )
    await wait_until(lambda: handler.dead_letter_blocked)
    handler.stop_dead_letter_retries()
    with pytest.raises(DeadLetterAbortedError):
        await asyncio.wait_for(task, 5)
    assert commit.count == 0
    assert not handler.dead_letter_blocked


async def test_cancelling_a_blocked_dead_letter_commits_nothing(bus: Bus) -> None:
    handler, _ = make_handler(bus, dead_letter_suffix=".missing")
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), PermanentError("bad"), Calls(), commit)
    )
    await wait_until(lambda: handler.dead_letter_blocked)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert commit.count == 0
    assert not handler.dead_letter_blocked


# --------------------------------------------------------------------------- no dead letters


async def test_disabled_dead_letters_retry_until_success() -> None:
    handler = ErrorHandler(
        None,
        "svc",
        dead_letter_enabled=False,
        max_attempts=2,
        backoff_initial_ms=1,
        backoff_max_ms=2,
        dlq_retry_backoff_initial_s=0.005,
        dlq_retry_backoff_max_s=0.01,
    )
    processing = Calls(*(PermanentError(f"fail {i}") for i in range(6)))
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), PermanentError("first"), processing, commit)
    )
    await wait_until(lambda: handler.dead_letter_blocked)
    assert commit.count == 0
    outcome = await asyncio.wait_for(task, 5)
    assert outcome is ProcessingOutcome.HANDLED
    assert processing.count == 7
    assert commit.count == 1
    assert not handler.dead_letter_blocked


async def test_disabled_dead_letters_stop_aborts_without_commit() -> None:
    handler = ErrorHandler(
        None,
        "svc",
        dead_letter_enabled=False,
        backoff_initial_ms=1,
        dlq_retry_backoff_initial_s=0.005,
        dlq_retry_backoff_max_s=0.01,
    )
    processing = Calls(*(ValueError("always") for _ in range(10_000)))
    commit = Commit()
    task = asyncio.create_task(
        handler.handle_processing_error(message(), ValueError("first"), processing, commit)
    )
    await wait_until(lambda: processing.count >= 4)
    handler.stop_dead_letter_retries()
    with pytest.raises(DeadLetterAbortedError):
        await asyncio.wait_for(task, 5)
    assert commit.count == 0


async def test_disabled_dead_letters_direct_call_waits_for_stop() -> None:
    handler = ErrorHandler(None, "svc", dead_letter_enabled=False)
    task = asyncio.create_task(handler.dead_letter(message(), DecodeError("bad"), attempts=1))
    await wait_until(lambda: handler.dead_letter_blocked)
    handler.stop_dead_letter_retries()
    with pytest.raises(DeadLetterAbortedError):
        await asyncio.wait_for(task, 5)
    assert not handler.dead_letter_blocked


async def test_retry_backoff_is_exponential_with_bounded_jitter_and_capped(bus: Bus) -> None:
    from tenacity import RetryCallState

    handler, _ = make_handler(bus, backoff_initial_ms=100, backoff_max_ms=500)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    for attempt, base in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (10, 0.5)):
        state.attempt_number = attempt
        for _ in range(50):
            wait = handler._retry_wait(state)
            assert base <= wait <= min(base + 0.1, 0.5) + 1e-9, (attempt, wait)


async def test_oversized_dead_letter_falls_back_to_compact_headers(bus: Bus) -> None:
    producer = MessageProducer(
        RedpandaSettings(bootstrap_servers=bus.url), "svc", max_request_size=4_000
    )
    handler = ErrorHandler(producer, "svc", dlq_retry_backoff_initial_s=0.005)
    value = b"v" * 2_500
    try:
        _raise_deep(60)  # a long message and a traceback of more than 4 KB
    except ValueError as exc:
        error = exc
    await asyncio.wait_for(handler.dead_letter(message(value=value), error, attempts=1), 5)
    [record] = bus.records()
    assert record.value == value
    headers = header_map(record)
    assert [n for n, _ in record.headers[2:]] == list(DEAD_LETTER_HEADERS)
    assert headers[HEADER_EXCEPTION_TRACEBACK] == b""
    assert 0 < len(headers[HEADER_EXCEPTION_MESSAGE]) <= 256
    assert handler.dead_letter_write_failures == 0
    await producer.stop()


async def test_dead_letter_too_large_even_compact_blocks(bus: Bus) -> None:
    producer = MessageProducer(
        RedpandaSettings(bootstrap_servers=bus.url), "svc", max_request_size=1_000
    )
    handler = ErrorHandler(producer, "svc", dlq_retry_backoff_initial_s=0.005)
    task = asyncio.create_task(
        handler.dead_letter(message(value=b"v" * 2_000), ValueError("x"), attempts=1)
    )
    await wait_until(lambda: handler.dead_letter_write_failures >= 2)
    assert handler.dead_letter_blocked
    handler.stop_dead_letter_retries()
    with pytest.raises(DeadLetterAbortedError):
        await asyncio.wait_for(task, 5)
    assert bus.records() == []
    await producer.stop()
