"""A flow with a batch handler: lists of events, partial failures, retries, dead letters."""

from __future__ import annotations

from typing import Any

from core.streaming.errors import PermanentError
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.steps import BatchItemsFailed
from core.streaming.testing import StreamTestHarness


async def test_a_batch_handler_gets_runs_of_events_in_partition_order() -> None:
    batches: list[list[int]] = []

    async def handle(events: list[dict[str, Any]]) -> None:
        batches.append([e["data"]["n"] for e in events])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for n in range(50):
            await harness.publish("in", {"n": n}, key="k")
        service = (
            StreamServiceBuilder("batcher", harness.config, harness.settings)
            .with_redis()
            .add_batch_handler(["in"], "g", handle)
            .build()
        )
        async with harness.running(service):
            await harness.wait_idle()
            counters = service.flows[0].layer.counters.snapshot()
    flat = [n for batch in batches for n in batch]
    assert flat == list(range(50))
    assert max(len(b) for b in batches) > 1, "events arrive in runs, not one by one"
    assert counters["handled"] == 50


async def test_failing_items_are_retried_then_dead_lettered_and_the_rest_is_handled() -> None:
    seen: list[int] = []
    attempts: dict[int, int] = {}

    async def handle(events: list[dict[str, Any]]) -> None:
        failures: dict[int, BaseException] = {}
        for i, event in enumerate(events):
            n = event["data"]["n"]
            attempts[n] = attempts.get(n, 0) + 1
            if n == 3:
                failures[i] = PermanentError("bad event")
            elif n == 7 and attempts[n] == 1:
                failures[i] = TimeoutError("blip")
            else:
                seen.append(n)
        if failures:
            raise BatchItemsFailed(failures)

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for n in range(10):
            await harness.publish("in", {"n": n}, key="k")
        service = (
            StreamServiceBuilder("batcher", harness.config, harness.settings)
            .add_batch_handler(["in"], "g", handle, retry_backoff_initial_ms=1)
            .build()
        )
        async with harness.running(service):
            await harness.wait_idle()
        dead = harness.dead_letters("in")
    assert sorted(seen) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert attempts[3] == 1 and attempts[7] == 2
    assert len(dead) == 1 and b'"n":3' in (dead[0].value or b"")


async def test_a_batch_handler_that_raises_fails_every_event_of_its_run() -> None:
    calls = 0

    async def handle(events: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("nothing of this batch can be handled")

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for n in range(3):
            await harness.publish("in", {"n": n}, key="k")
        service = (
            StreamServiceBuilder("batcher", harness.config, harness.settings)
            .add_batch_handler(["in"], "g", handle)
            .build()
        )
        async with harness.running(service):
            await harness.wait_idle()
        dead = harness.dead_letters("in")
    assert len(dead) == 3
    assert {(d.error_type or "").rsplit(".", 1)[-1] for d in dead} == {"ValueError"}
