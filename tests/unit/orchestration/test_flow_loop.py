"""The fetch loop, directly: backpressure pauses at the bound and resumes at half of it."""

from __future__ import annotations

import asyncio
from typing import Any

from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import eventually, service


async def test_backpressure_pauses_at_the_bound_and_resumes_only_at_half() -> None:
    gates: list[asyncio.Event] = []
    handled = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal handled
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        handled += 1

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        for n in range(40):
            await harness.publish("in", {"n": n}, key="k")
        orchestrator = service(
            harness.settings,
            handle,
            dedup=False,
            max_in_flight=10,
            ordering="unordered",
            concurrency=10,
        )
        flow = orchestrator.flows[0]
        consumer = flow.consumer
        async with harness.running(orchestrator):
            await eventually(
                lambda: len(gates) == 10 and bool(consumer.paused()), 10, "paused at the bound"
            )
            for gate in gates[:4]:
                gate.set()
            await eventually(lambda: handled == 4, 5, "four handled")
            await asyncio.sleep(0.3)
            assert flow.dispatcher.in_flight == 6
            assert consumer.paused(), "resumed while in flight was above half the bound"
            assert flow.backpressure_pauses == 1
            gates[4].set()
            await eventually(
                lambda: flow.backpressure_pauses >= 2 or not consumer.paused(),
                5,
                "resumed at half the bound",
            )
            while handled < 40:
                for gate in gates:
                    gate.set()
                await asyncio.sleep(0.01)
            await harness.wait_idle(timeout_s=20)


async def test_the_loop_raises_when_a_lane_crashed_and_the_supervisor_restarts_it() -> None:
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    async with StreamTestHarness() as harness:
        orchestrator = service(harness.settings, handle, dedup=False)
        orchestrator.restart_backoff_s = 0.01
        flow = orchestrator.flows[0]
        original = flow.layer.process_batch
        crashed = False

        async def crash_once(batch: Any) -> None:
            nonlocal crashed
            if not crashed:
                crashed = True
                raise RuntimeError("outside the reliability path")
            await original(batch)

        flow.layer.process_batch = crash_once  # type: ignore[method-assign]
        flow.dispatcher.process = crash_once
        async with harness.running(orchestrator):
            for n in range(5):
                await harness.publish("in", {"n": n}, key="k")
            await eventually(lambda: sorted(handled) == list(range(5)), 20, "all five handled")
            health = await orchestrator.health()
    loop = next(v for k, v in health["components"].items() if k.startswith("loop["))
    assert loop["restarts"] == 1 and loop["alive"]
