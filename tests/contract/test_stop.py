"""Stop time never grows with the prefetched buffer, and every wait is bounded.

(Delivery contract 12, 13.) Messages that have not started are dropped (their
claims released, left uncommitted), running handlers finish within the drain
timeout, exactly what was handled is committed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from core.streaming.embedded import get_broker
from core.streaming.testing import StreamTestHarness
from core.streaming.types import TopicPartition
from tests.conftest import PrivateRedis
from tests.contract.helpers import eventually, service, tuned
from tests.integration.orchestration.helpers import kafka_settings, produce


async def test_stop_leaves_queued_messages_uncommitted_and_returns_quickly() -> None:
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)
        handled.append(event["data"]["n"])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for n in range(300):
            await harness.publish("in", {"n": n}, key="k")
        first = service(harness.settings, handle, max_in_flight=1_000)
        async with harness.running(first):
            await eventually(lambda: len(handled) >= 3, 10, "handling to start")
            started = time.monotonic()
            await first.stop()
            took = time.monotonic() - started
        committed = get_broker(harness.broker_url).committed("g", TopicPartition("in", 0))
        assert took < 1.0, f"stop took {took:.2f} s with a full buffer"
        assert committed == len(handled) and handled == list(range(len(handled)))
        before = len(handled)
        second = service(harness.settings, handle, max_in_flight=1_000)
        async with harness.running(second):
            await harness.wait_idle(timeout_s=60)
    assert before < 300
    assert handled == list(range(300)), "every message handled exactly once across the restart"


@pytest.mark.kafka
@pytest.mark.redis
async def test_stop_with_redis_gone_under_fail_closed_is_bounded_and_commits_nothing_unmarked(
    kafka_bootstrap: str, private_redis: PrivateRedis, kafka_admin: Any, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    handled: list[int] = []
    redis_gone = asyncio.Event()

    async def handle(event: dict[str, Any]) -> None:
        if event["data"]["n"] == 4:
            await redis_gone.wait()  # finishes with its done mark still to write
        handled.append(event["data"]["n"])

    settings = tuned(
        kafka_settings(kafka_bootstrap, private_redis.url),
        dedup_failure_policy="fail_closed",
        stop_timeout_s=2.0,
        drain_timeout_s=2.0,
        commit_interval_ms=60_000,
        commit_every=100_000,
    )
    group = f"{unique_name}-g"
    orchestrator = service(settings, handle, topics=[topic], group=group)
    await orchestrator.start()
    try:
        await produce(kafka_bootstrap, topic, [("k", {"n": n}) for n in range(5)])
        await eventually(lambda: len(handled) == 4, 20, "four messages handled")
        await private_redis.run("stop")
        redis_gone.set()
        await eventually(lambda: len(handled) == 5, 20, "the fifth handled")
        started = time.monotonic()
    finally:
        await orchestrator.stop()
    took = time.monotonic() - started
    from tests.integration.orchestration.helpers import committed_offsets

    assert took < 10.0, f"stop took {took:.1f} s with Redis gone"
    assert (await committed_offsets(kafka_bootstrap, group, topic, 1))[0] < 5
