"""The whole reliability path of a built service, on the real Kafka broker and redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import create_redis
from core.streaming.errors import PermanentError, RetryableError
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.deduplication_manager import DeduplicationManager
from tests.conftest import KafkaAdmin, PrivateRedis
from tests.integration.orchestration.helpers import (
    committed_offsets,
    end_offsets,
    kafka_settings,
    produce,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def _envelope(event_id: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "type": "t",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "x",
            "data": {"n": n},
        }
    )


async def _raw_send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(topic, value, key=f"k{i % 5}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 20) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < n and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def _done_in_redis(redis_url: str, service: str, group: str, event_id: str) -> bool:
    """True when the real Redis holds the done mark of ``event_id`` for ``group``."""
    redis = create_redis(RedisSettings(url=SecretStr(redis_url)))
    try:
        store = DeduplicationManager(redis, service, consumer_group=group)
        return (await store.state(event_id))[0] == "done"
    finally:
        await redis.aclose()


async def test_same_event_three_times_runs_once_and_groups_are_independent(
    kafka_bootstrap: str, redis_url: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=3)
    values = [_envelope(f"{unique_name}-e{i}", i) for i in range(20)]
    await _raw_send(kafka_bootstrap, topic, values + values + values)
    calls: dict[str, list[int]] = {"a": [], "b": []}

    def handler(name: str) -> Any:
        async def handle(event: dict[str, Any]) -> None:
            calls[name].append(event["data"]["n"])

        return handle

    service = (
        StreamServiceBuilder(unique_name, settings=kafka_settings(kafka_bootstrap, redis_url))
        .with_redis()
        .add_consumer_handler([topic], f"{unique_name}-a", handler("a"))
        .add_consumer_handler([topic], f"{unique_name}-b", handler("b"))
        .build()
    )
    await service.start()
    try:
        await wait_until(
            lambda: all(
                f.layer.outcomes["duplicate"] + len(calls[n]) >= 60
                for f, n in zip(service.flows, "ab", strict=True)
            ),
            60,
            "all 60 deliveries in both groups",
        )
    finally:
        await service.stop()
    assert sorted(calls["a"]) == list(range(20))
    assert sorted(calls["b"]) == list(range(20))
    for name in "ab":
        event = f"{unique_name}-e0"
        assert await _done_in_redis(redis_url, unique_name, f"{unique_name}-{name}", event)
    assert service.metrics is not None and service.metrics.snapshot()["duplicates"] == 80


async def test_transient_failures_retry_then_succeed_without_dead_letter(
    kafka_bootstrap: str, redis_url: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    await produce(kafka_bootstrap, topic, [("k", {"n": 1})])
    attempts = 0

    async def flaky(event: dict[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise RetryableError("downstream timeout")

    settings = kafka_settings(kafka_bootstrap, redis_url, retry_backoff_initial_ms=10)
    service = (
        StreamServiceBuilder(unique_name, settings=settings)
        .with_redis()
        .add_consumer_handler([topic], f"{unique_name}-g", flaky)
        .build()
    )
    await service.start()
    try:
        await wait_until(lambda: service.flows[0].layer.outcomes["handled"] == 1, 30, "handled")
    finally:
        await service.stop()
    assert service.metrics is not None
    snap = service.metrics.snapshot()
    assert attempts == 3 and snap["retries"] == 2 and snap["dead_lettered"] == 0
    assert await committed_offsets(kafka_bootstrap, f"{unique_name}-g", topic, 1) == {0: 1}


async def test_permanent_failure_and_garbage_are_dead_lettered_and_flow_continues(
    kafka_bootstrap: str, redis_url: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    poison = _envelope(f"{unique_name}-poison", 13)
    garbage = b"\x00\x01 definitely not json"
    values = [_envelope(f"{unique_name}-{i}", i) for i in range(5)]
    await _raw_send(kafka_bootstrap, topic, [values[0], poison, values[1], garbage, *values[2:]])
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        if event["data"]["n"] == 13:
            raise PermanentError("cannot ever handle 13")
        handled.append(event["data"]["n"])

    group = f"{unique_name}-g"
    service = (
        StreamServiceBuilder(unique_name, settings=kafka_settings(kafka_bootstrap, redis_url))
        .with_redis()
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    await service.start()
    try:
        await wait_until(lambda: len(handled) == 5, 30, "the good messages")
        await wait_until(
            lambda: service.flows[0].layer.outcomes["dead_lettered"] == 2, 30, "two dead letters"
        )
    finally:
        await service.stop()
    assert handled == [0, 1, 2, 3, 4]
    dead = await _read_all(kafka_bootstrap, f"{topic}.dlq", 2)
    # Dead letters keep their original keys, so they may sit on different partitions.
    dead.sort(key=lambda r: int(dict(r.headers)["dlq.original.offset"]))
    assert [r.value for r in dead] == [poison, garbage]
    headers = [dict(r.headers) for r in dead]
    assert headers[0]["dlq.original.offset"] == b"1"
    assert headers[0]["dlq.exception.type"].endswith(b"PermanentError")
    assert headers[1]["dlq.exception.type"].endswith(b"DecodeError")
    assert headers[0]["dlq.consumer.group"] == group.encode()
    assert service.metrics is not None and service.metrics.snapshot()["decode_failures"] == 1
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == await end_offsets(
        kafka_bootstrap, topic, 1
    )


async def test_unwritable_dead_letter_topic_stops_the_flow_then_resumes(
    kafka_bootstrap: str, redis_url: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    await _raw_send(kafka_bootstrap, topic, [b"garbage", _envelope(f"{unique_name}-ok", 1)])
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    group = f"{unique_name}-g"
    settings = kafka_settings(kafka_bootstrap, redis_url, commit_interval_ms=100)
    service = (
        StreamServiceBuilder(unique_name, settings=settings)
        .with_redis()
        .add_consumer_handler([topic], group, handle, dead_letter_topic="bad topic name!")
        .ensure_topics(False)
        .build()
    )
    await service.start()
    try:
        error_handler = service.flows[0].layer.error_handler
        await wait_until(lambda: error_handler.dead_letter_blocked, 30, "the blocked dead letter")
        # Three failed writes take several commit intervals (100 ms) of retry backoff.
        await wait_until(
            lambda: error_handler.dead_letter_write_failures >= 3, 30, "retried dead letters"
        )
        assert handled == []  # partition order: nothing behind the poison message ran
        assert await committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 0}
        health = await service.health()
        assert next(v for k, v in health["components"].items() if k.startswith("flow["))[
            "dead_letter_blocked"
        ]
        error_handler.dead_letter_topic_override = f"{topic}.dlq"
        await wait_until(lambda: handled == [1], 30, "resume after the fix")
    finally:
        await service.stop()
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 2}
    assert await _done_in_redis(redis_url, unique_name, group, f"{unique_name}-ok")
    assert [r.value for r in await _read_all(kafka_bootstrap, f"{topic}.dlq", 1)] == [b"garbage"]


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_stopped_mid_run_loses_nothing(
    policy: str,
    kafka_bootstrap: str,
    kafka_admin: KafkaAdmin,
    private_redis: PrivateRedis,
    unique_name: str,
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=2)
    settings = kafka_settings(kafka_bootstrap, dedup_failure_policy=policy).model_copy(
        update={"redis": RedisSettings(url=SecretStr(private_redis.url), socket_timeout_s=0.5)}
    )
    handled: set[int] = set()

    async def handle(event: dict[str, Any]) -> None:
        handled.add(event["data"]["n"])

    group = f"{unique_name}-g"
    service: ServiceOrchestrator = (
        StreamServiceBuilder(unique_name, settings=settings)
        .with_redis()
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    await service.start()
    try:
        await produce(kafka_bootstrap, topic, [(f"k{i}", {"n": i}) for i in range(100)])
        await wait_until(lambda: len(handled) == 100, 30, "first 100")
        await private_redis.run("stop")
        await produce(kafka_bootstrap, topic, [(f"k{i}", {"n": i}) for i in range(100, 200)])
        if policy == "fail_open":
            await wait_until(lambda: len(handled) == 200, 30, "handled without dedup")
            assert service.metrics is not None
            assert service.metrics.snapshot()["dedup_unavailable"] > 0
        else:
            dedup = service.flows[0].layer.deduplicator
            assert dedup is not None
            failed_before = dedup.unavailable_count
            await wait_until(
                lambda: dedup.unavailable_count >= failed_before + 3, 30, "retries of Redis"
            )
            assert len(handled) == 100, "fail_closed must pause while Redis is down"
        await private_redis.run("start")
        await wait_until(lambda: len(handled) == 200, 60, "every message after Redis returned")
    finally:
        await service.stop()
    layer = service.flows[0].layer
    assert handled == set(range(200))
    assert layer.outcomes["handled"] + layer.outcomes["dead_lettered"] >= 200
    assert await committed_offsets(kafka_bootstrap, group, topic, 2) == await end_offsets(
        kafka_bootstrap, topic, 2
    )
