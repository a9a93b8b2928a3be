"""The Kafka broker is SIGKILLed under a running service and comes back: nothing is lost.

The broker is a private one (``private_kafka``): killing the shared test broker
would break every test running beside this one. The service consumes an input
topic and, for each input, publishes one output event through its own producer,
so both the consuming and the producing side live through the outage.

What the outage does (observed): the handlers in flight wait in
``producer.send`` (the idempotent aiokafka producer retries its batches until the
broker is back; they do not expire after ``request_timeout_ms``), the fetch loop
waits in its offset commit (aiokafka retries it too) and the clients reconnect on
their own; the service stays
live, reports not ready while the broker is away, and nothing crashes, retries
or is dead-lettered. After ``resume`` everything is handled and committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.reliability_layer import MessageOutcome
from tests.conftest import KafkaAdmin, PrivateKafka
from tests.integration.orchestration.helpers import (
    committed_offsets,
    end_offsets,
    kafka_settings,
    produce,
    wait_until,
)

# Broker start (~7 s), resume (~15 s: the restarted KRaft controller waits out the
# killed broker's session) and the bounded waits below fit well within this.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

logger = logging.getLogger(__name__)

PARTITIONS = 3
BEFORE = 300  # produced before the outage
AFTER = 100  # produced after the broker is back
KILL_AFTER = 100  # handled inputs before the broker is killed
OUTAGE_S = 3.0  # broker down (plus the time `resume` takes)
RECOVERY_S = 60.0


async def _outputs_by_input(bootstrap: str, topic: str, want: set[int], timeout_s: float) -> Any:
    """Input number -> count of output events on ``topic``, read until all of ``want``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    counts: dict[int, int] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while not want <= counts.keys() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    n = orjson.loads(record.value)["data"]["n"]
                    counts[n] = counts.get(n, 0) + 1
    finally:
        await consumer.stop()
    return counts


class _HealthWatch:
    """Samples the service's health in the background, to tell what the outage did."""

    def __init__(self, service: ServiceOrchestrator) -> None:
        self.service = service
        self.samples: list[tuple[float, bool, str, int, str | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                health = await self.service.health()
            except Exception as exc:  # recorded, not fatal: the watch must outlive the outage
                health = {"live": False, "status": f"health() raised {exc!r}", "components": {}}
            loops = [v for k, v in health["components"].items() if k.startswith("loop[")]
            self.samples.append(
                (
                    round(time.monotonic() - self._t0, 1),
                    bool(health["live"]),
                    str(health["status"]),
                    sum(int(v.get("restarts", 0)) for v in loops),
                    next((v["last_error"] for v in loops if v.get("last_error")), None),
                )
            )
            await asyncio.sleep(0.25)

    @property
    def ever_not_live(self) -> bool:
        return any(not sample[1] for sample in self.samples)

    @property
    def restarts(self) -> int:
        """Loop restarts the supervisors counted (the most seen in one sample)."""
        return max((sample[3] for sample in self.samples), default=0)

    def changes(self) -> list[tuple[float, bool, str, int, str | None]]:
        """The samples where something other than the time changed."""
        out: list[tuple[float, bool, str, int, str | None]] = []
        for sample in self.samples:
            if not out or out[-1][1:] != sample[1:]:
                out.append(sample)
        return out


async def test_broker_killed_and_resumed_loses_nothing(
    private_kafka: PrivateKafka, unique_name: str
) -> None:
    bootstrap = private_kafka.bootstrap
    in_topic, out_topic, group = f"{unique_name}-in", f"{unique_name}-out", f"{unique_name}-g"
    admin_client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin_client.start()
    try:
        admin = KafkaAdmin(admin_client)
        await admin.create_topic(in_topic, PARTITIONS)
        await admin.create_topic(out_topic, PARTITIONS)
    finally:
        await admin_client.close()

    settings = kafka_settings(bootstrap)
    # Requests that can time out (metadata, admin, fetch) give up after 5 s, not 30 s.
    settings = settings.model_copy(
        update={"redpanda": settings.redpanda.model_copy(update={"request_timeout_ms": 5000})}
    )
    attempted: list[int] = []  # every handler call
    handled: list[int] = []  # every handler call that published its output
    service: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        attempted.append(n)
        await asyncio.sleep(0.02)  # some work, so the outage lands mid-stream
        await service.producer.send(out_topic, f"k{n}", {"n": n}, "test.output")
        handled.append(n)

    service = (
        StreamServiceBuilder(unique_name, settings=settings)
        .add_consumer_handler([in_topic], group, handle)
        .add_producer([out_topic])
        .build()
    )
    watch = _HealthWatch(service)
    timeline: list[str] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        line = f"{time.monotonic() - t0:6.1f}s {what} (handled {len(set(handled))} distinct)"
        timeline.append(line)
        logger.info("timeline: %s", line)

    all_inputs = set(range(BEFORE + AFTER))
    await service.start()
    watch.start()
    try:
        await produce(bootstrap, in_topic, [(f"k{i}", {"n": i}) for i in range(BEFORE)])
        mark(f"produced {BEFORE}")
        await wait_until(lambda: len(set(handled)) >= KILL_AFTER, 30, f"{KILL_AFTER} handled")
        await private_kafka.run("kill")
        mark("broker killed")
        handled_at_kill = len(set(handled))
        await asyncio.sleep(OUTAGE_S)
        handled_before_resume = len(set(handled))
        mark("resuming broker")
        await private_kafka.run("resume")
        mark("broker answers again")
        await produce(
            bootstrap, in_topic, [(f"k{i}", {"n": i}) for i in range(BEFORE, BEFORE + AFTER)]
        )
        mark(f"produced {AFTER} more")
        try:
            await wait_until(lambda: set(handled) >= all_inputs, RECOVERY_S, "every input handled")
        except AssertionError:
            missing = sorted(all_inputs - set(handled))
            health = await service.health()
            raise AssertionError(
                f"{len(missing)} inputs never handled within {RECOVERY_S} s after the broker "
                f"came back: {missing[:20]}...\ntimeline: {timeline}\n"
                f"health changes: {watch.changes()}\nhealth now: {health}\n"
                f"in flight: {service.flows[0].dispatcher.in_flight}"
            ) from None
        mark("every input handled")
        live_at_end = service.is_live
        final_health = await service.health()
    finally:
        await watch.stop()
        await service.stop()
        mark("service stopped")

    flow = service.flows[0]
    snap = service.metrics.snapshot() if service.metrics is not None else {}
    duplicates = len(handled) - len(set(handled))
    outputs = await _outputs_by_input(bootstrap, out_topic, all_inputs, 20)
    report = (
        f"timeline: {timeline}\nhealth changes (t, live, status, restarts, last error): "
        f"{watch.changes()}\noutcomes: {dict(flow.layer.outcomes)}, "
        f"handler calls {len(attempted)}, handled {len(handled)} ({duplicates} duplicates), "
        f"outputs {sum(outputs.values())} for {len(outputs)} inputs, "
        f"commit failures {flow.consumer.commit_failures}, metrics {snap}\n"
        f"broker log: {private_kafka.log_path}"
    )
    logger.info("broker outage report:\n%s", report)
    print(report)

    # The outage hit the flow mid-stream: part of the first batch was still to come,
    # and it stayed to come while the broker was down.
    assert handled_at_kill < BEFORE, report
    assert handled_before_resume < BEFORE, report
    # At least once: every input handled, duplicates allowed.
    assert set(handled) == all_inputs, report
    # Nothing dead-lettered: the sends waited the outage out instead of failing.
    assert flow.layer.outcomes[MessageOutcome.DEAD_LETTERED] == 0, report
    # Everything consumed was committed.
    assert await committed_offsets(bootstrap, group, in_topic, PARTITIONS) == await end_offsets(
        bootstrap, in_topic, PARTITIONS
    ), report
    # Every input has at least one output event.
    assert not all_inputs - outputs.keys(), (sorted(all_inputs - outputs.keys())[:20], report)
    # The service stayed live, or its supervisor restarted a crashed loop; either
    # way it is live and ready again at the end.
    assert live_at_end and final_health["live"] and final_health["ready"], report
    assert not watch.ever_not_live or watch.restarts > 0, report


async def test_stop_while_the_broker_is_down_is_bounded(
    private_kafka: PrivateKafka, unique_name: str
) -> None:
    """A stop during an outage gives up on the commit and the flush after their timeouts."""
    bootstrap = private_kafka.bootstrap
    topic = f"{unique_name}.in"
    handled: list[int] = []
    settings = kafka_settings(bootstrap, drain_timeout_s=2.0, stop_timeout_s=2.0)
    service: ServiceOrchestrator = (
        StreamServiceBuilder(unique_name, settings=settings)
        .add_producer(topics=[f"{unique_name}.out"])
        .add_consumer_handler([topic], f"{unique_name}-g", lambda e: _echo(service, e, handled))
        .build()
    )
    await service.start()
    try:
        await produce(bootstrap, topic, [(f"k{i}", {"n": i}) for i in range(50)])
        await wait_until(lambda: len(handled) >= 10, 30, "some messages handled")
        await private_kafka.run("kill")
    finally:
        started = time.monotonic()
        await asyncio.wait_for(service.stop(), 60)
        took = time.monotonic() - started
    # loop 2 s + drain 2 s + commit 2 s + leave 2 s + flush 2 s + close 2 s, with slack:
    # far below the unbounded wait (aiokafka retries commits and sends forever).
    assert took < 30, f"stop took {took:.1f} s"
    assert (await service.health())["status"] == "stopped"


async def _echo(service: ServiceOrchestrator, event: dict[str, Any], handled: list[int]) -> None:
    handled.append(event["data"]["n"])
    await service.producer.send(f"{service.service_name}.out", None, {"n": event["data"]["n"]})
