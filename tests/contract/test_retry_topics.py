"""Non-blocking retries through delayed retry topics, on the embedded broker and real Kafka.

A retryable failure moves the message to ``<topic>.retry.<n>`` and its partition
flows on; each retry topic's consumer holds a partition until its head is due,
then hands it to the same handler; after the last retry the message is
dead-lettered with every attempt in its headers; a restart during a delay loses
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from core.streaming.errors import PermanentError, RetryableError
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from tests.contract.conftest import Backend
from tests.contract.helpers import eventually, service

pytestmark = pytest.mark.timeout(120)


class Calls:
    """When each attempt of each event started (wall clock), and at which fetch."""

    def __init__(self) -> None:
        self.at: dict[int, list[float]] = {}
        self.fetch: dict[int, list[int]] = {}
        self.fetches = 0

    def record(self, n: int) -> int:
        self.at.setdefault(n, []).append(time.time())
        self.fetch.setdefault(n, []).append(self.fetches)
        return len(self.at[n])


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The worst overshoot of a 5 ms sleep while the block runs: how busy the machine is."""
    worst = [0.0]

    async def probe() -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.005)
            worst[0] = max(worst[0], time.monotonic() - started - 0.005)

    task = asyncio.create_task(probe())
    try:
        yield worst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _count_fetches(orchestrator: ServiceOrchestrator, calls: Calls) -> None:
    consumer = orchestrator.flows[0].consumer
    fetch = consumer.fetch_partitioned

    async def counted(*args: Any, **kwargs: Any) -> Any:
        batch = await fetch(*args, **kwargs)
        if batch:
            calls.fetches += 1
        return batch

    consumer.fetch_partitioned = counted  # type: ignore[method-assign]


async def test_a_poisoned_message_does_not_hold_up_its_partition(backend: Backend) -> None:
    source = await backend.create_topic("in", partitions=1)
    calls = Calls()

    async def handle(event: dict[str, Any]) -> None:
        calls.record(event["data"]["n"])
        if event["data"]["n"] == 0:
            raise RetryableError("downstream refuses this one")

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        retry_topics=[30.0],
    )
    _count_fetches(orchestrator, calls)
    harness = backend.harness
    for n in range(40):
        await harness.publish(source, {"n": n}, key="one-key")
    async with harness.running(orchestrator):
        await eventually(lambda: len(calls.at) == 40, 30, "every message handled once")
        main = orchestrator.flows[0]
        await eventually(lambda: main.layer.error_handler.scheduled == 1, 10, "the retry")
        handling = main.health()["error_handling"]["retry"]
    poison_fetch = calls.fetch[0][0]
    assert poison_fetch >= 1, "fetches are counted"
    assert max(f[0] for f in calls.fetch.values()) <= poison_fetch + 1, calls.fetch
    assert calls.at[0] == calls.at[0][:1], "the poison waits in its retry topic (30 s)"
    assert handling["scheduled"] == 1
    assert main.health()["outcomes"]["handled"] == 39


async def test_retries_come_due_on_time_and_end_in_the_dead_letter_topic(
    backend: Backend,
) -> None:
    source = await backend.create_topic("in", partitions=2)
    for level in (1, 2):
        await backend.create_topic(f"in.retry.{level}", partitions=2)
    calls = Calls()

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        attempt = calls.record(n)
        if n == 7:
            raise RetryableError(f"attempt {attempt} failed")

    delays = [0.5, 1.0]
    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        retry_topics=delays,
    )
    harness = backend.harness
    async with harness.running(orchestrator), loop_lag() as lag:
        await harness.publish(source, {"n": 1}, key="a")
        await harness.publish(source, {"n": 7}, key="b")
        await eventually(lambda: len(calls.at.get(7, [])) == 3, 30, "three attempts")
        await harness.wait_idle(timeout_s=30)
        last = orchestrator.flows[2].health()["error_handling"]
    dead = await harness.read_dead_letters(source)

    first, second, third = calls.at[7]
    # Never early (due times have millisecond resolution); late by at most 100 ms on an
    # idle machine, plus whatever stall this machine's scheduler showed meanwhile.
    late = 0.1 + lag[0]
    assert delays[0] - 0.002 <= second - first < delays[0] + late, (second - first, lag)
    assert delays[1] - 0.002 <= third - second < delays[1] + late, (third - second, lag)
    assert calls.at[1] == calls.at[1][:1]
    assert len(dead) == 1
    headers = dead[0].decoded_headers()
    history = orjson.loads(headers["retry.history"] or "[]")
    assert [h["topic"] for h in history] == [source, f"{source}.retry.1", f"{source}.retry.2"]
    assert [h["error"] for h in history] == [f"attempt {i} failed" for i in (1, 2, 3)]
    assert headers["dlq.original.topic"] == source
    assert headers["dlq.original.offset"] == str(history[0]["offset"])
    assert headers["dlq.attempts"] == "3"
    assert b'"n":7' in (dead[0].value or b"")
    assert last["retry"]["dead_lettered_after_last_retry"] == 1


async def test_a_permanent_failure_skips_the_retry_topics(backend: Backend) -> None:
    source = await backend.create_topic("in")

    async def handle(event: dict[str, Any]) -> None:
        raise PermanentError("never valid")

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        retry_topics=[0.2],
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        await harness.publish(source, {"n": 1}, key="a")
        await harness.wait_idle(timeout_s=30)
        scheduled = orchestrator.flows[0].layer.error_handler.scheduled
    dead = await harness.read_dead_letters(source)
    assert scheduled == 0
    assert len(dead) == 1 and dead[0].header("retry.history") is None


async def test_a_restart_during_a_retry_delay_loses_nothing(backend: Backend) -> None:
    source = await backend.create_topic("in")
    await backend.create_topic("in.retry.1")
    group = backend.topic("g")
    calls = Calls()

    async def handle(event: dict[str, Any]) -> None:
        if calls.record(event["data"]["n"]) == 1:
            raise RetryableError("first attempt fails")

    def build() -> ServiceOrchestrator:
        return service(
            backend.settings,
            handle,
            topics=[source],
            group=group,
            dedup=False,
            retry_topics=[3.0],
        )

    harness = backend.harness
    first = build()
    async with harness.running(first):
        await harness.publish(source, {"n": 1}, key="a")
        retry_flow = first.flows[1]
        await eventually(
            lambda: retry_flow.health()["error_handling"]["retry"]["held_partitions"] == 1,
            30,
            "the retry partition held until due",
        )
        failed_at = calls.at[1][0]
    assert len(calls.at[1]) == 1, "stopped before the retry was due"
    async with harness.running(build()) as second:
        await eventually(lambda: len(calls.at[1]) == 2, 30, "the retry after the restart")
        await harness.wait_idle(timeout_s=30)
        handled = second.flows[1].health()["outcomes"]["handled"]
    assert calls.at[1][1] - failed_at >= 3.0
    assert handled == 1
    assert await harness.read_dead_letters(source) == []
