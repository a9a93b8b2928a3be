"""Supervised loops, graceful drain and failed starts of built services on the real broker.

The crash test deduplicates on the real redis-server; the drain test runs without
dedup; the failed-start test points at a Redis that is not there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import create_redis
from core.streaming.orchestration.lifecycle_coordinator import ComponentStartError
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.deduplication_manager import DeduplicationManager
from tests.conftest import KafkaAdmin
from tests.integration.orchestration.helpers import (
    committed_offsets,
    end_offsets,
    kafka_settings,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka


@pytest.mark.redis
async def test_loop_crash_is_restarted_and_loses_nothing(
    kafka_bootstrap: str, redis_url: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=2)
    ids = await produce(kafka_bootstrap, topic, [(f"k{i}", {"i": i}) for i in range(300)])
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["i"])

    group = f"{unique_name}-g"
    service = (
        StreamServiceBuilder(unique_name, settings=kafka_settings(kafka_bootstrap, redis_url))
        .with_redis()
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    consumer = service.consumers[0]
    consumer.max_poll_records = 50  # several fetches, so the crash lands mid-stream
    original = consumer.fetch_partitioned
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected fetch crash")
        return await original(*args, **kwargs)

    consumer.fetch_partitioned = crash_once  # type: ignore[method-assign]
    service.restart_backoff_s = 0.05
    await service.start()
    try:
        await wait_until(lambda: len(set(handled)) >= 300, 60, "every message handled")
        health = await service.health()
    finally:
        await service.stop()
    loop_health = next(v for k, v in health["components"].items() if k.startswith("loop["))
    assert loop_health["restarts"] == 1 and loop_health["alive"]
    assert health["live"]
    # Redelivered after the crash, handled ones were skipped as duplicates in Redis.
    assert sorted(handled) == list(range(300))
    assert await committed_offsets(kafka_bootstrap, group, topic, 2) == await end_offsets(
        kafka_bootstrap, topic, 2
    )
    redis = create_redis(RedisSettings(url=SecretStr(redis_url)))
    try:
        store = DeduplicationManager(redis, unique_name, consumer_group=group)
        states = [(await store.state(event_id))[0] for event_id in ids]
        assert states == ["done"] * 300
    finally:
        await redis.aclose()


async def test_repeated_crashes_make_the_service_unhealthy(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)

    async def handle(event: dict[str, Any]) -> None:
        return None

    settings = kafka_settings(kafka_bootstrap, max_loop_restarts=2)
    service = (
        StreamServiceBuilder("doomed", settings=settings)
        .add_consumer_handler([topic], f"{unique_name}-g", handle)
        .build()
    )
    service.restart_backoff_s = 0.01

    async def always_crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken fetch")

    service.consumers[0].fetch_partitioned = always_crash  # type: ignore[method-assign]
    await service.start()
    try:
        await wait_until(lambda: not service.is_live, 30, "service to turn unhealthy")
        health = await service.health()
    finally:
        await service.stop()
    assert health["status"] == "unhealthy" and not health["live"] and not health["ready"]
    loop_health = next(v for k, v in health["components"].items() if k.startswith("loop["))
    assert loop_health["gave_up"] and loop_health["restarts"] == 3
    assert "broken fetch" in loop_health["last_error"]


async def test_stop_lets_a_sleeping_handler_finish_and_commits_it(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    await produce(kafka_bootstrap, topic, [(None, {"i": 0})])
    entered = asyncio.Event()
    completed: list[int] = []

    async def slow(event: dict[str, Any]) -> None:
        entered.set()
        await asyncio.sleep(1.0)
        completed.append(event["data"]["i"])

    group = f"{unique_name}-g"

    def build(handler: Any) -> Any:
        return (
            StreamServiceBuilder("drainer", settings=kafka_settings(kafka_bootstrap))
            .add_consumer_handler([topic], group, handler)
            .build()
        )

    service = build(slow)
    await service.start()
    await asyncio.wait_for(entered.wait(), 30)
    await service.stop()  # while the handler sleeps mid-message
    assert completed == [0]
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 1}

    redelivered: list[int] = []

    async def record(event: dict[str, Any]) -> None:
        redelivered.append(event["data"]["i"])

    again = build(record)
    await again.start()
    try:
        await wait_until(lambda: again.consumers[0].has_joined, 30, "rejoin")
        await produce(kafka_bootstrap, topic, [(None, {"i": 1})])
        await wait_until(lambda: redelivered == [1], 30, "only the new message")
    finally:
        await again.stop()


async def test_failed_start_names_redis_and_stops_what_started(
    kafka_bootstrap: str, unique_name: str
) -> None:
    settings = kafka_settings(kafka_bootstrap).model_copy(
        update={
            "redis": RedisSettings(
                url=SecretStr("redis://:pw@127.0.0.1:1/0"),
                connect_timeout_s=1,
                socket_timeout_s=0.5,
            )
        }
    )

    async def handle(event: dict[str, Any]) -> None:
        return None

    service = (
        StreamServiceBuilder("needs-redis", settings=settings)
        .with_redis()
        .add_producer()
        .add_consumer_handler([f"{unique_name}"], f"{unique_name}-g", handle)
        .build()
    )
    with pytest.raises(ComponentStartError) as info:
        await service.start()
    message = str(info.value)
    assert "Redis not reachable at 127.0.0.1:1" in message and "pw" not in message
    assert info.value.component == "connections"
    assert service.connections is not None and service.connections._admin is None
    assert not service.producer.is_running and not service.consumers[0].is_running
    await service.stop()  # harmless after a failed start
