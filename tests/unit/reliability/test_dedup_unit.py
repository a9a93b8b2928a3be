"""DeduplicationManager against fakeredis (with Lua) and an unreachable Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import fakeredis
import orjson
import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import Redis, create_redis
from core.streaming.errors import RetryableError
from core.streaming.reliability.dedup_scripts import id_array, key_id
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.metrics_collector import MetricsCollector


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def client(server: fakeredis.FakeServer) -> AsyncIterator[Redis]:
    redis = fakeredis.FakeAsyncRedis(server=server)
    yield redis
    await redis.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    settings = RedisSettings(
        url=SecretStr("redis://127.0.0.1:1/0"), connect_timeout_s=0.2, socket_timeout_s=0.2
    )
    redis = create_redis(settings)
    yield redis
    await redis.aclose()


def manager(client: Redis, **kwargs: object) -> DeduplicationManager:
    return DeduplicationManager(client, "svc", **kwargs)  # type: ignore[arg-type]


class CountingRedis:
    """Counts the round trips a manager makes (script calls and pipelines)."""

    def __init__(self, inner: Redis) -> None:
        self.inner = inner
        self.calls = 0

    def register_script(self, script: str) -> object:
        real = self.inner.register_script(script)
        outer = self

        async def call(keys: list[str], args: list[str | int], client: object = None) -> object:
            if client is None:  # a call inside a pipeline is part of its round trip
                outer.calls += 1
            return await real(keys=keys, args=args, client=client)

        return call

    def pipeline(self, transaction: bool = True) -> object:
        self.calls += 1
        return self.inner.pipeline(transaction=transaction)


# --------------------------------------------------------------------------- claims


async def test_claim_then_done_then_duplicate(client: Redis) -> None:
    dedup = manager(client)
    assert await dedup.claim("e1") is ClaimResult.CLAIMED
    assert await dedup.claim("e1") is ClaimResult.HELD_HERE  # our own claim, another copy
    await dedup.mark_done("e1")
    assert await dedup.claim("e1") is ClaimResult.DUPLICATE
    # A second manager (another worker) has no local cache: Redis answers.
    other = manager(client)
    assert await other.claim("e1") is ClaimResult.DUPLICATE
    assert await other.is_duplicate("e1") is True


async def test_other_worker_sees_in_progress_and_claim_expires(client: Redis) -> None:
    first = manager(client, processing_ttl_ms=50)
    second = manager(client, processing_ttl_ms=50)
    assert await first.claim("e1") is ClaimResult.CLAIMED
    assert await second.claim("e1") is ClaimResult.IN_PROGRESS
    assert await second.is_duplicate("e1") is False
    await asyncio.sleep(0.08)  # the crashed worker's claim lapses at its deadline
    assert await second.claim("e1") is ClaimResult.CLAIMED


async def test_claim_sets_processing_ttl_and_done_sets_full_ttl(client: Redis) -> None:
    dedup = manager(client, ttl_seconds=120, processing_ttl_ms=5_000)
    await dedup.claim("e1")
    token, left = await dedup.state("e1")
    assert token is not None and token.startswith(f"p|{dedup.member}|")  # member|tp|gen|n
    assert 0 < left <= 5_000
    await dedup.mark_done("e1")
    assert await dedup.state("e1") == ("done", 0)
    done_ttl = await client.pttl(dedup.done_key(dedup.shard_of("e1"), dedup.current_bucket()))
    assert 2 * 120_000 < done_ttl <= 2 * 120_000 + 60_000


async def test_release_lets_a_retry_run_and_never_deletes_done(client: Redis) -> None:
    first = manager(client)
    second = manager(client)
    assert await first.claim("e1") is ClaimResult.CLAIMED
    await second.release("e1")  # not its claim: nothing happens
    assert await second.claim("e1") is ClaimResult.IN_PROGRESS
    await first.release("e1")
    assert await second.claim("e1") is ClaimResult.CLAIMED
    await second.mark_done("e1")
    await second.release("e1")
    await first.release("e1")
    assert await second.state("e1") == ("done", 0)


async def test_keys_are_scoped_by_service_and_group(client: Redis) -> None:
    flow_a = manager(client, consumer_group="group-a")
    flow_b = manager(client, consumer_group="group-b")
    default = manager(client)
    other_service = DeduplicationManager(client, "other", consumer_group="group-a")
    assert flow_a.key_for("e1") == "dedup:{svc:group-a:0}:claims"
    assert default.key_for("e1") == "dedup:{svc:default:0}:claims"
    await flow_a.claim("e1")
    await flow_a.mark_done("e1")
    assert await flow_b.claim("e1") is ClaimResult.CLAIMED
    assert await default.claim("e1") is ClaimResult.CLAIMED
    assert await other_service.claim("e1") is ClaimResult.CLAIMED
    assert await manager(client, consumer_group="group-a").claim("e1") is ClaimResult.DUPLICATE


async def test_claim_many_is_one_round_trip_and_mixes_states(client: Redis) -> None:
    counting = CountingRedis(client)
    dedup = DeduplicationManager(counting, "svc")  # type: ignore[arg-type]
    other = manager(client)
    await other.claim("busy")
    await other.mark_done("done-elsewhere")

    results = await dedup.claim_many(["a", "b", "busy", "done-elsewhere", "a"])
    assert results == {
        "a": ClaimResult.CLAIMED,
        "b": ClaimResult.CLAIMED,
        "busy": ClaimResult.IN_PROGRESS,
        "done-elsewhere": ClaimResult.DUPLICATE,
    }
    assert counting.calls == 1

    await dedup.mark_done_many(["a", "b"])
    assert counting.calls == 2
    # Every id is now known done locally: no round trip at all.
    again = await dedup.claim_many(["a", "b", "done-elsewhere"])
    assert set(again.values()) == {ClaimResult.DUPLICATE}
    assert counting.calls == 2
    assert await dedup.claim_many([]) == {}
    assert counting.calls == 2


async def test_local_cache_hit_needs_no_round_trip(client: Redis) -> None:
    counting = CountingRedis(client)
    dedup = DeduplicationManager(counting, "svc")  # type: ignore[arg-type]
    await dedup.claim("e1")
    await dedup.mark_done("e1")
    calls = counting.calls
    assert await dedup.claim("e1") is ClaimResult.DUPLICATE
    assert await dedup.is_duplicate("e1") is True
    assert counting.calls == calls


async def test_plan_api_is_duplicate_and_mark_processed(client: Redis) -> None:
    dedup = manager(client)
    assert await dedup.is_duplicate("e1") is False
    assert await dedup.state("e1") == (None, 0), "is_duplicate must not claim"
    await dedup.mark_processed("e1")
    assert await dedup.is_duplicate("e1") is True
    assert await manager(client).is_duplicate("e1") is True


# --------------------------------------------------------------------------- local cache


async def test_a_done_batch_larger_than_one_unpack_is_written_whole(client: Redis) -> None:
    counting = CountingRedis(client)
    dedup = DeduplicationManager(counting, "svc", local_cache_size=0)  # type: ignore[arg-type]
    ids = [f"e{n}" for n in range(2_500)]
    for n in range(0, len(ids), 1000):
        await dedup.claim_many(ids[n : n + 1000])
    calls = counting.calls
    await dedup.mark_done_many(ids)
    assert counting.calls == calls + 1, "one script call"
    assert await client.hlen(dedup.claims_key(0)) == 0
    assert await client.scard(dedup.done_key(0, dedup.current_bucket())) == len(ids)


async def test_local_cache_keeps_the_most_recently_recorded_ids(client: Redis) -> None:
    counting = CountingRedis(client)
    dedup = DeduplicationManager(counting, "svc", local_cache_size=3)  # type: ignore[arg-type]
    await dedup.mark_done_many(["a", "b"])
    await dedup.mark_done_many(["c", "d"])
    assert dedup.local_cache_len == 4  # the older chunk is still needed to hold 3
    await dedup.mark_done_many(["e", "f", "g"])
    # Whole chunks go, oldest first, once the newer ones hold the size.
    assert dedup.local_cache_len == 3
    assert all(dedup.cached(e) for e in "efg")
    assert not any(dedup.cached(e) for e in "abcd")
    for n in range(20):
        await dedup.mark_done(f"x{n}")
        assert 3 <= dedup.local_cache_len <= 6
    assert dedup.cached("x19") and dedup.cached("x17") and not dedup.cached("x10")
    # b is still done in Redis: a claim asks Redis and records it again.
    calls = counting.calls
    assert await dedup.claim("b") is ClaimResult.DUPLICATE
    assert counting.calls == calls + 1
    assert dedup.cached("b")


async def test_a_batch_whose_first_id_is_not_known_asks_redis_for_all(client: Redis) -> None:
    counting = CountingRedis(client)
    dedup = DeduplicationManager(counting, "svc")  # type: ignore[arg-type]
    await dedup.mark_done_many(["a", "b"])
    calls = counting.calls
    results = await dedup.claim_many(["new", "a", "b"])
    assert results == {
        "new": ClaimResult.CLAIMED,
        "a": ClaimResult.DUPLICATE,
        "b": ClaimResult.DUPLICATE,
    }
    assert counting.calls == calls + 1


async def test_ids_known_done_here_stay_duplicates_while_redis_is_down(
    dead_redis: Redis,
) -> None:
    dedup = manager(dead_redis, failure_policy="fail_open")
    await dedup.mark_done_many(["a", "b"])  # not written: remembered here
    # The first id is not known, so the batch goes to Redis, which fails.
    results = await dedup.claim_many(["new", "a", "b"])
    assert results == {
        "new": ClaimResult.BYPASSED,
        "a": ClaimResult.DUPLICATE,
        "b": ClaimResult.DUPLICATE,
    }


async def test_local_cache_disabled_with_size_zero(client: Redis) -> None:
    dedup = manager(client, local_cache_size=0)
    await dedup.mark_done("a")
    assert dedup.local_cache_len == 0
    assert await dedup.claim("a") is ClaimResult.DUPLICATE


async def test_local_cache_never_outlives_ttl(client: Redis) -> None:
    clock = FakeClock()
    dedup = manager(client, ttl_seconds=10, clock=clock)
    await dedup.mark_done("a")
    clock.advance(9.9)
    assert dedup.cached("a")
    clock.advance(0.1)
    assert not dedup.cached("a")
    assert dedup.local_cache_len == 0
    # Redis forgot it too (simulated): the manager must not answer duplicate.
    await client.delete(dedup.done_key(0, dedup.current_bucket()))
    assert await dedup.claim("a") is ClaimResult.CLAIMED


async def test_cache_entry_from_redis_expires_with_the_redis_record(client: Redis) -> None:
    clock = FakeClock()
    wall = FakeClock()
    wall.now = 1_050.0  # bucket 10 of 100 s, which ends at 1,100
    writer = manager(client, ttl_seconds=100, wall_clock=wall)
    await writer.mark_done("a")
    wall.now = 1_098.0  # 2 s before the bucket ends: only then is "a" surely kept
    reader = manager(client, ttl_seconds=100, clock=clock, wall_clock=wall)
    assert await reader.claim("a") is ClaimResult.DUPLICATE
    assert reader.cached("a")
    clock.advance(2.0)
    assert not reader.cached("a"), "cache entry outlived the Redis record"


# --------------------------------------------------------------------------- Redis down


async def test_fail_open_bypasses_and_counts(
    dead_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = MetricsCollector("svc")
    dedup = manager(dead_redis, failure_policy="fail_open", metrics=metrics)
    with caplog.at_level(logging.WARNING):
        assert await dedup.claim("e1") is ClaimResult.BYPASSED
        assert await dedup.claim_many(["e2", "e3"]) == {
            "e2": ClaimResult.BYPASSED,
            "e3": ClaimResult.BYPASSED,
        }
        assert await dedup.is_duplicate("e4") is False
        await dedup.mark_done("e1")
        await dedup.release_claims([("e2", "p|x|t:0|1|0")])
    assert metrics.snapshot()["dedup_unavailable"] == 6
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, "warnings are rate limited"
    # Done ids are still remembered locally while Redis is away.
    assert await dedup.claim("e1") is ClaimResult.DUPLICATE


async def test_fail_closed_raises_retryable(dead_redis: Redis) -> None:
    metrics = MetricsCollector("svc")
    dedup = manager(dead_redis, failure_policy="fail_closed", metrics=metrics)
    with pytest.raises(DedupUnavailableError) as info:
        await dedup.claim("e1")
    assert isinstance(info.value, RetryableError)
    with pytest.raises(DedupUnavailableError):
        await dedup.claim_many(["e1", "e2"])
    with pytest.raises(DedupUnavailableError):
        await dedup.mark_done_many(["e1"])
    with pytest.raises(DedupUnavailableError):
        await dedup.is_duplicate("e9")
    await dedup.release_claims([("e1", "p|x|t:0|1|0")])  # expires by itself: never raises
    assert metrics.snapshot()["dedup_unavailable"] == 6


def test_rejects_bad_configuration(client: Redis) -> None:
    with pytest.raises(ValueError):
        manager(client, ttl_seconds=0)
    with pytest.raises(ValueError):
        manager(client, processing_ttl_ms=0)
    with pytest.raises(ValueError):
        manager(client, local_cache_size=-1)
    with pytest.raises(ValueError):
        manager(client, failure_policy="ignore")


ODD_IDS = [
    "plain",
    "with\nnewline",
    "with\ttab",
    'with"quote',
    "with\\backslash",
    "\u00fcn\u00efc\u00f6d\u00e9 \u6f22\u5b57",
    "x" * 300,
    "lone\ud800surrogate",
]


def test_the_script_argument_holds_each_id_in_its_key_form() -> None:
    assert orjson.loads(id_array(ODD_IDS)) == [key_id(e) for e in ODD_IDS]
    assert orjson.loads(id_array(["a", "b"])) == ["a", "b"]
    assert key_id("x" * 300).startswith("sha256:") and key_id("lone\ud800").startswith("sha256:")


@pytest.mark.parametrize("odd", ODD_IDS)
async def test_batch_paths_agree_whatever_the_ids(client: Redis, odd: str) -> None:
    """Odd ids (separators, quotes, long, not UTF-8) behave like any other."""
    dedup = DeduplicationManager(client, "svc", consumer_group="g", local_cache_size=0)
    ids = ["a", odd, "b"]
    assert set((await dedup.claim_many(ids)).values()) == {ClaimResult.CLAIMED}
    await dedup.mark_done_many(["a", odd])
    again = await dedup.claim_many([*ids, "c"])
    assert again == {
        "a": ClaimResult.DUPLICATE,
        odd: ClaimResult.DUPLICATE,
        "b": ClaimResult.HELD_HERE,
        "c": ClaimResult.CLAIMED,
    }
    assert await dedup.state(odd) == ("done", 0)
    assert await dedup.state("b") != (None, 0)
