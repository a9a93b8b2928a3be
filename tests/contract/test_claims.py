"""A claimed event runs in one place at a time (delivery contract 4, 5, 6, 14).

Claims carry their own owner token, are kept alive while their handler (and
its retries) run, and a partition's new owner takes over the claims a dead
owner left on that partition at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import (
    Concurrency,
    envelope,
    eventually,
    keys_for_partitions,
    service,
    tuned,
)


async def test_two_lanes_of_one_process_never_run_one_event_together() -> None:
    # m0 (slow) and m2 (event X) go to lane 0, m1 and m3 (X again) to lane 1.
    # X's batch claim waits in lane 0 behind m0 for longer than the claim's lifetime.
    seen = Concurrency()

    async def handle(event: dict[str, Any]) -> None:
        seen.enter(event["id"])
        try:
            await asyncio.sleep(0.6 if event["id"] in ("slow", "X") else 0)
        finally:
            seen.leave(event["id"])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for event_id in ("slow", "other", "X", "X"):
            await harness.publish_raw("in", envelope(event_id))
        settings = tuned(harness.settings, dedup_processing_ttl_ms=200)
        orchestrator = service(settings, handle, ordering="unordered", concurrency=2)
        async with harness.running(orchestrator):
            await harness.wait_idle(timeout_s=15)
    assert seen.peak["X"] == 1
    assert seen.runs["X"] == 1


async def test_a_claim_is_kept_alive_while_its_handler_runs() -> None:
    # X arrives on two partitions; partition 0's copy runs for longer than the
    # claim lifetime while partition 1's copy waits for it.
    seen = Concurrency()

    async def handle(event: dict[str, Any]) -> None:
        seen.enter(event["id"])
        try:
            await asyncio.sleep(0.8)
        finally:
            seen.leave(event["id"])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 2)
        for key in keys_for_partitions(2):
            await harness.publish_raw("in", envelope("X"), key=key)
        assert {r.partition for r in harness.records("in")} == {0, 1}
        settings = tuned(harness.settings, dedup_processing_ttl_ms=200)
        orchestrator = service(settings, handle)
        async with harness.running(orchestrator):
            await harness.wait_idle(timeout_s=15)
    assert seen.peak["X"] == 1
    assert seen.runs["X"] == 1


async def test_a_handler_past_its_timeout_fails_its_attempt_and_shows_in_health() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()

    async with StreamTestHarness() as harness:
        orchestrator = service(
            harness.settings,
            handle,
            handler_timeout_s=0.2,
            retry_attempts=2,
            retry_backoff_initial_ms=1,
        )
        async with harness.running(orchestrator):
            await harness.publish("in", {"n": 1})
            await harness.wait_idle(timeout_s=10)
        dead = harness.dead_letters("in")
    assert calls == 2
    assert len(dead) == 1 and (dead[0].error_type or "").endswith(".HandlerTimeoutError")


async def test_a_handler_that_ignores_its_timeout_is_reported_overdue() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handle(event: dict[str, Any]) -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # swallows the timeout's cancellation

    async with StreamTestHarness() as harness:
        orchestrator = service(harness.settings, handle, handler_timeout_s=0.1)
        async with harness.running(orchestrator):
            await harness.publish("in", {"n": 1})
            await started.wait()
            await asyncio.sleep(0.3)
            health = await orchestrator.health()
            release.set()
            await harness.wait_idle(timeout_s=10)
    flow = next(v for k, v in health["components"].items() if k.startswith("flow["))
    assert flow["overdue_handlers"] == 1
    assert health["ready"] is False


async def test_a_new_owner_takes_over_the_claims_a_crashed_member_left() -> None:
    handled: list[str] = []
    stuck = asyncio.Event()

    async def first(event: dict[str, Any]) -> None:
        stuck.set()
        await asyncio.Event().wait()  # never returns: its member dies while holding claims

    async def second(event: dict[str, Any]) -> None:
        handled.append(event["id"])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for i in range(5):
            await harness.publish_raw("in", envelope(f"e{i}"))
        dying = service(harness.settings, first, name="svc")
        await dying.start()
        await stuck.wait()
        await dying.consumers[0].client.crash()  # type: ignore[attr-defined]
        survivor = service(harness.settings, second, name="svc")
        async with harness.running(survivor):
            await eventually(lambda: len(handled) == 5, 10, "the new owner to handle all 5")
            await harness.wait_idle(timeout_s=10)
        for task in [t for t in asyncio.all_tasks() if t.get_name().startswith("lane-")]:
            task.cancel()
    assert handled == [f"e{i}" for i in range(5)]


async def test_waiting_on_another_live_owners_claim_is_visible() -> None:
    # X is on both partitions; two members of one group each own one partition.
    # The member that did not get X's claim waits, and says so.
    release = asyncio.Event()

    async def slow(event: dict[str, Any]) -> None:
        await release.wait()

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 2)
        a = service(harness.settings, slow, name="svc")
        b = service(harness.settings, slow, name="svc")
        async with harness.running(a), harness.running(b):
            await eventually(
                lambda: all(len(s.consumers[0].assignment()) == 1 for s in (a, b)),
                10,
                "one partition per member",
            )
            for key in keys_for_partitions(2):
                await harness.publish_raw("in", envelope("X"), key=key)
            await eventually(
                lambda: sum(f.dispatcher.in_flight for s in (a, b) for f in s.flows) == 2,
                10,
                "both copies in flight",
            )
            await asyncio.sleep(0.3)
            reports = [await s.health() for s in (a, b)]
            waiting = [
                v["waiting_on_claims"]
                for r in reports
                for k, v in r["components"].items()
                if k.startswith("flow[")
            ]
            release.set()
            await harness.wait_idle(timeout_s=10)
    assert sorted(waiting) == [0, 1]
