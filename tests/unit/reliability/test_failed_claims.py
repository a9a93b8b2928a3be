"""Claims of failed claim calls are taken back by their member (fakeredis with Lua)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.streaming.clients import Redis
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.reliability.failed_claims import FailedClaimCalls


class RunsThenTimesOut:
    """A client whose next script call runs in Redis but times out on the way back."""

    def __init__(self, inner: Redis) -> None:
        self.inner = inner
        self.armed = False
        self.error: BaseException = RedisTimeoutError("Timeout reading from socket")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def register_script(self, script: str) -> object:
        real = self.inner.register_script(script)
        outer = self

        async def call(keys: list[str], args: list[Any], client: object = None) -> object:
            reply = await real(keys=keys, args=args, client=client)
            if outer.armed:
                outer.armed = False
                raise outer.error
            return reply

        return call


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield redis
    await redis.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_claims_of_a_call_that_timed_out_are_taken_back_at_once(
    client: Redis, policy: str
) -> None:
    flaky = RunsThenTimesOut(client)
    dedup = DeduplicationManager(flaky, "svc", failure_policy=policy)  # type: ignore[arg-type]
    flaky.armed = True
    if policy == "fail_closed":
        with pytest.raises(DedupUnavailableError):
            await dedup.claim_batch(["a", "b"], partition="t:0", generation=1)
    else:
        bypassed = await dedup.claim_batch(["a", "b"], partition="t:0", generation=1)
        assert [r for r, _ in bypassed] == [ClaimResult.BYPASSED] * 2
    # The call did run: Redis holds claims of this member that nobody here holds.
    token, _ = await dedup.state("a")
    assert token is not None and token.startswith(f"p|{dedup.member}|")

    results = await dedup.claim_batch(["a", "b", "c"], partition="t:0", generation=1)
    assert [r for r, _ in results] == [ClaimResult.CLAIMED] * 3
    new_token = results[0][1]
    assert new_token is not None and new_token != token
    assert (await dedup.state("a"))[0] == new_token


async def test_claims_of_a_call_cancelled_in_flight_are_taken_back(client: Redis) -> None:
    flaky = RunsThenTimesOut(client)
    flaky.error = asyncio.CancelledError()
    dedup = DeduplicationManager(flaky, "svc")  # type: ignore[arg-type]
    flaky.armed = True
    with pytest.raises(asyncio.CancelledError):
        await dedup.claim_batch(["a"], partition="t:0", generation=1)
    results = await dedup.claim_batch(["a"], partition="t:0", generation=1)
    assert results[0][0] is ClaimResult.CLAIMED


async def test_claims_of_calls_that_succeeded_still_wait_for_their_holder(client: Redis) -> None:
    flaky = RunsThenTimesOut(client)
    dedup = DeduplicationManager(flaky, "svc")  # type: ignore[arg-type]
    other = DeduplicationManager(client, "svc")
    held = await dedup.claim_batch(["a"], partition="t:0", generation=1)
    assert held[0][0] is ClaimResult.CLAIMED
    assert (await other.claim_batch(["b"], partition="t:1", generation=1))[0][0] is (
        ClaimResult.CLAIMED
    )
    flaky.armed = True
    with pytest.raises(DedupUnavailableError):
        await DeduplicationManager(flaky, "svc", failure_policy="fail_closed").claim_batch(["z"])
    flaky.armed = True
    await dedup.claim_batch(["c"], partition="t:0", generation=1)  # fails open: "c" bypassed
    # "a" is held here under a token the member knows; "b" by another member; "c" failed.
    again = await dedup.claim_batch(["a", "b", "c"], partition="t:0", generation=1)
    assert [r for r, _ in again] == [
        ClaimResult.HELD_HERE,
        ClaimResult.IN_PROGRESS,
        ClaimResult.CLAIMED,
    ]


def test_numbers_are_kept_until_the_ttl_passed_after_a_success() -> None:
    calls = FailedClaimCalls(processing_ttl_ms=1_000)
    assert calls.arg() == ""
    calls.failed([3, 4])
    assert calls.arg() == "3,4"
    calls.succeeded(now=10.0)  # kept for twice the processing TTL from here
    calls.failed([7])
    calls.succeeded(now=11.9)
    assert calls.arg() == "3,4,7"
    calls.succeeded(now=12.0)
    assert calls.arg() == "7"
    calls.succeeded(now=13.9)
    assert calls.arg() == ""
    assert len(calls) == 0


def test_at_most_limit_numbers_are_kept_oldest_dropped_first() -> None:
    calls = FailedClaimCalls(processing_ttl_ms=1_000, limit=3)
    calls.failed(range(5))
    assert calls.arg() == "2,3,4"
