"""A Redis that answers with errors follows the dedup failure policy (delivery contract 10).

READONLY after a failover, OOM and a flushed script cache go through
``fail_open``/``fail_closed`` like connection errors; the flow never dies for
good and nothing is dropped.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as redis_asyncio
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.embedded import drop_broker
from core.streaming.testing import StreamTestHarness
from tests.conftest import PrivateRedis
from tests.contract.helpers import envelope, eventually, service, tuned

pytestmark = pytest.mark.redis

BREAK = {
    "oom": (["CONFIG", "SET", "maxmemory", "1"], ["CONFIG", "SET", "maxmemory", "0"]),
    "readonly": (["REPLICAOF", "127.0.0.1", "1"], ["REPLICAOF", "NO", "ONE"]),
}


def _settings(redis_url: str, policy: str) -> Settings:
    base = Settings().model_copy(
        update={
            "redpanda": RedpandaSettings(bootstrap_servers=f"memory://r-{uuid4().hex[:8]}"),
            "redis": RedisSettings(url=SecretStr(redis_url)),
        }
    )
    return tuned(base, dedup_failure_policy=policy, max_loop_restarts=1)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
@pytest.mark.parametrize("fault", ["oom", "readonly"])
async def test_error_replies_follow_the_failure_policy_and_the_flow_survives(
    private_redis: PrivateRedis, fault: str, policy: str
) -> None:
    handled: list[str] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["id"])

    breaker, healer = BREAK[fault]
    admin = redis_asyncio.Redis.from_url(private_redis.url)
    settings = _settings(private_redis.url, policy)
    try:
        async with StreamTestHarness(settings, embedded=False) as harness:
            orchestrator = service(settings, handle)
            async with harness.running(orchestrator):
                await harness.publish_raw("in", envelope("before"))
                await eventually(lambda: handled == ["before"], 10, "the first message")
                await admin.execute_command(*breaker)
                for i in range(3):
                    await harness.publish_raw("in", envelope(f"during-{i}"))
                if policy == "fail_open":
                    await eventually(lambda: len(handled) == 4, 10, "handling without dedup")
                else:
                    health = await orchestrator.health()
                    assert not health["ready"] or len(handled) == 1
                await admin.execute_command(*healer)
                await harness.publish_raw("in", envelope("after"))
                await eventually(lambda: "after" in handled, 30, "the flow to recover")
                await harness.wait_idle(timeout_s=30)
                health = await orchestrator.health()
    finally:
        await admin.execute_command(*healer)
        await admin.aclose()
        drop_broker(settings.redpanda.bootstrap_servers)
    assert sorted(handled) == sorted(["before", "during-0", "during-1", "during-2", "after"])
    assert health["live"] and health["ready"]
    loops = [v for k, v in health["components"].items() if k.startswith("loop[")]
    assert loops and all(loop["restarts"] == 0 for loop in loops)


async def test_a_flushed_script_cache_is_reloaded(private_redis: PrivateRedis) -> None:
    handled: list[str] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["id"])

    admin = redis_asyncio.Redis.from_url(private_redis.url)
    settings = _settings(private_redis.url, "fail_closed")
    try:
        async with StreamTestHarness(settings, embedded=False) as harness:
            orchestrator = service(settings, handle)
            async with harness.running(orchestrator):
                for round_ in range(3):
                    await harness.publish_raw("in", envelope(f"e{round_}"))
                    await harness.publish_raw("in", envelope(f"e{round_}"))
                    expected = round_ + 1
                    await eventually(lambda: len(handled) == expected, 10, "a round")  # noqa: B023
                    await harness.wait_idle(timeout_s=10)
                    await admin.execute_command("SCRIPT", "FLUSH")
                health = await orchestrator.health()
    finally:
        await admin.aclose()
        drop_broker(settings.redpanda.bootstrap_servers)
    assert handled == ["e0", "e1", "e2"]
    loops = [v for k, v in health["components"].items() if k.startswith("loop[")]
    assert all(loop["restarts"] == 0 for loop in loops)
