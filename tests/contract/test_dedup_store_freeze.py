"""Claims a frozen Redis makes after the client gave up do not block their own member.

While Redis is stopped (SIGSTOP) a claim call times out on the client, but its
command waits in the socket and Redis runs it when it continues: the ids then
hold claims of this member under a token the member never learned. A later
claim of the same ids must take them at once, not wait for them to expire.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import create_redis
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from tests.conftest import PrivateRedis

pytestmark = pytest.mark.redis


@pytest.fixture
async def frozen_once(private_redis: PrivateRedis) -> AsyncIterator[tuple[PrivateRedis, int]]:
    pid = int((Path(private_redis.env["INFRA_DIR"]) / "redis" / "redis.pid").read_text())
    try:
        yield private_redis, pid
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave the server stopped


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_claims_run_after_a_timeout_are_taken_back_by_their_member(
    frozen_once: tuple[PrivateRedis, int], policy: str
) -> None:
    server, pid = frozen_once
    client = create_redis(
        RedisSettings(url=SecretStr(server.url), connect_timeout_s=0.5, socket_timeout_s=0.5)
    )
    admin = redis_asyncio.Redis.from_url(server.url)
    store = DeduplicationManager(
        client,
        "svc",
        consumer_group="g",
        processing_ttl_ms=60_000,
        failure_policy=policy,  # type: ignore[arg-type]
    )
    ids = ["e-1", "e-2", "e-3"]
    try:
        await store.claim_batch(["warm-up"], partition="t:0", generation=1)
        os.kill(pid, signal.SIGSTOP)
        if policy == "fail_closed":
            with pytest.raises(DedupUnavailableError):
                await store.claim_batch(ids, partition="t:0", generation=1)
        else:
            results = await store.claim_batch(ids, partition="t:0", generation=1)
            assert [r for r, _ in results] == [ClaimResult.BYPASSED] * 3
        os.kill(pid, signal.SIGCONT)

        for _ in range(500):  # the timed-out claim runs once Redis continues
            held = await admin.hmget(store.key_for("e-1"), ids)
            if all(h is not None and store.member.encode() in h for h in held):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the timed-out claim never ran")

        results = await asyncio.wait_for(store.claim_batch(ids, partition="t:0", generation=1), 5)
        assert [r for r, _ in results] == [ClaimResult.CLAIMED] * 3
        token = results[0][1]
        assert token is not None
        # The claims are ours under the new token: renewal and the done mark work.
        assert await store.renew([(i, token) for i in ids]) == [True] * 3
        await store.mark_done_many(ids)
        again = await store.claim_batch(ids, partition="t:0", generation=1)
        assert [r for r, _ in again] == [ClaimResult.DUPLICATE] * 3
    finally:
        os.kill(pid, signal.SIGCONT)
        await client.aclose()
        await admin.aclose()
