"""DeduplicationManager against a real redis-server: races, TTLs, Redis going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import Redis, create_redis
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.metrics_collector import MetricsCollector
from tests.conftest import PrivateRedis
from tests.unit.reliability.test_dedup_unit import ODD_IDS

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


def connect(url: str) -> Redis:
    return create_redis(RedisSettings(url=SecretStr(url), connect_timeout_s=1, socket_timeout_s=1))


@pytest.fixture
async def two_clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    first, second = connect(redis_url), connect(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_odd_ids_are_claimed_marked_and_skipped_on_real_redis(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    """Separators, quotes, backslashes, non-ASCII, long and non-UTF-8 ids in one batch."""
    first = DeduplicationManager(two_clients[0], unique_name, local_cache_size=0)
    second = DeduplicationManager(two_clients[1], unique_name, local_cache_size=0)
    claimed = await first.claim_many(ODD_IDS)
    assert set(claimed.values()) == {ClaimResult.CLAIMED}
    assert set((await second.claim_many(ODD_IDS)).values()) == {ClaimResult.IN_PROGRESS}
    await first.mark_done_many(ODD_IDS)
    assert set((await second.claim_many(ODD_IDS)).values()) == {ClaimResult.DUPLICATE}
    for event_id in ODD_IDS:
        assert await second.is_duplicate(event_id), event_id


async def test_large_done_batches_are_written_whole_on_real_redis(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    """More ids than one Lua unpack takes, in one done-mark call: all done, no claim left."""
    first = DeduplicationManager(two_clients[0], unique_name, local_cache_size=0)
    second = DeduplicationManager(two_clients[1], unique_name, local_cache_size=0)
    ids = [f"big-{n}" for n in range(12_345)]
    for n in range(0, len(ids), 1000):
        assert set((await first.claim_many(ids[n : n + 1000])).values()) == {ClaimResult.CLAIMED}
    await first.mark_done_many(ids)
    assert set((await second.claim_many(ids[:1000])).values()) == {ClaimResult.DUPLICATE}
    assert set((await second.claim_many(ids[-1000:])).values()) == {ClaimResult.DUPLICATE}
    assert await two_clients[0].hlen(first.claims_key(0)) == 0
    assert await two_clients[0].scard(first.done_key(0, first.current_bucket())) == len(ids)


async def test_racing_claims_have_exactly_one_winner(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    first = DeduplicationManager(two_clients[0], unique_name, consumer_group="g")
    second = DeduplicationManager(two_clients[1], unique_name, consumer_group="g")
    await first.claim("warm-up")
    await second.claim("warm-up")
    for i in range(200):
        event_id = f"race-{i}"
        results = await asyncio.gather(first.claim(event_id), second.claim(event_id))
        assert sorted(results) == sorted([ClaimResult.CLAIMED, ClaimResult.IN_PROGRESS]), (
            i,
            results,
        )


async def test_racing_batches_claim_each_id_once(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    first = DeduplicationManager(two_clients[0], unique_name)
    second = DeduplicationManager(two_clients[1], unique_name)
    for round_no in range(20):
        ids = [f"batch-{round_no}-{i}" for i in range(50)]
        a, b = await asyncio.gather(first.claim_many(ids), second.claim_many(reversed(ids)))
        for event_id in ids:
            pair = sorted([a[event_id], b[event_id]])
            assert pair == sorted([ClaimResult.CLAIMED, ClaimResult.IN_PROGRESS]), event_id


async def test_lifecycle_and_ttls_on_real_redis(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    client = two_clients[0]
    worker = DeduplicationManager(client, unique_name, 30, processing_ttl_ms=2_000)
    other = DeduplicationManager(two_clients[1], unique_name, 30, processing_ttl_ms=2_000)
    assert await worker.claim("e1") is ClaimResult.CLAIMED
    assert 0 < (await worker.state("e1"))[1] <= 2_000
    await other.release("e1")
    assert await other.claim("e1") is ClaimResult.IN_PROGRESS
    await worker.release("e1")
    assert await other.claim("e1") is ClaimResult.CLAIMED
    await other.mark_done_many(["e1", "e2"])
    done_set = worker.done_key(worker.shard_of("e1"), worker.current_bucket())
    assert 2 * 30_000 < await client.pttl(done_set) <= 2 * 30_000 + 60_000
    assert await worker.claim_many(["e1", "e2", "e3"]) == {
        "e1": ClaimResult.DUPLICATE,
        "e2": ClaimResult.DUPLICATE,
        "e3": ClaimResult.CLAIMED,
    }
    await worker.release("e1")
    assert await worker.state("e1") == ("done", 0)
    assert await DeduplicationManager(client, unique_name, 30).is_duplicate("e2")


async def test_crashed_workers_claim_expires(
    two_clients: tuple[Redis, Redis], unique_name: str
) -> None:
    crashed = DeduplicationManager(two_clients[0], unique_name, processing_ttl_ms=200)
    survivor = DeduplicationManager(two_clients[1], unique_name, processing_ttl_ms=200)
    assert await crashed.claim("e1") is ClaimResult.CLAIMED
    assert await survivor.claim("e1") is ClaimResult.IN_PROGRESS
    result = ClaimResult.IN_PROGRESS
    for _ in range(100):
        result = await survivor.claim("e1")
        if result is not ClaimResult.IN_PROGRESS:
            break
        await asyncio.sleep(0.02)
    assert result is ClaimResult.CLAIMED


# --------------------------------------------------------------------------- Redis stopped


async def _claim_until_claimed(
    call: Callable[[], Awaitable[ClaimResult]], limit_s: float = 10.0
) -> ClaimResult | DedupUnavailableError:
    """Poll ``call`` (bounded) until Redis answers again with CLAIMED."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        result: ClaimResult | DedupUnavailableError
        try:
            result = await call()
        except DedupUnavailableError as exc:
            result = exc
        if result is ClaimResult.CLAIMED or loop.time() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_redis_stopped_mid_run_fail_open(
    private_redis: PrivateRedis, unique_name: str
) -> None:
    client = connect(private_redis.url)
    metrics = MetricsCollector(unique_name)
    dedup = DeduplicationManager(client, unique_name, failure_policy="fail_open", metrics=metrics)
    try:
        assert await dedup.claim("before") is ClaimResult.CLAIMED
        await dedup.mark_done("before")

        await private_redis.run("stop")
        assert await dedup.claim("during") is ClaimResult.BYPASSED
        assert await dedup.claim_many(["d1", "d2"]) == {
            "d1": ClaimResult.BYPASSED,
            "d2": ClaimResult.BYPASSED,
        }
        await dedup.mark_done("during")  # no-op on Redis, remembered locally
        await dedup.release_claims([("d1", "p|x|t:0|1|0")])
        assert await dedup.claim("before") is ClaimResult.DUPLICATE  # local cache
        assert metrics.snapshot()["dedup_unavailable"] >= 5

        await private_redis.run("start")
        # The server restarted empty (and without our scripts): claims work again.
        result = await _claim_until_claimed(lambda: dedup.claim("after"))
        assert result is ClaimResult.CLAIMED
        assert await dedup.claim("after") is ClaimResult.HELD_HERE
    finally:
        await client.aclose()


async def test_redis_stopped_mid_run_fail_closed(
    private_redis: PrivateRedis, unique_name: str
) -> None:
    client = connect(private_redis.url)
    dedup = DeduplicationManager(client, unique_name, failure_policy="fail_closed")
    try:
        assert await dedup.claim("before") is ClaimResult.CLAIMED
        await private_redis.run("stop")
        with pytest.raises(DedupUnavailableError):
            await dedup.claim("during")
        with pytest.raises(DedupUnavailableError):
            await dedup.mark_done_many(["before"])
        await private_redis.run("start")
        result = await _claim_until_claimed(lambda: dedup.claim("during"))
        assert result is ClaimResult.CLAIMED
    finally:
        await client.aclose()
