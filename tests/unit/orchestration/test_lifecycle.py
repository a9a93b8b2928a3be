"""LifecycleCoordinator: order, undo on failed start, timeouts, signals."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

from core.streaming.orchestration.lifecycle_coordinator import (
    SERVING_GC_THRESHOLD,
    ComponentStartError,
    LifecycleCoordinator,
    Stage,
    serving_gc,
)
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator


class Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False, hang: bool = False) -> None:
        self.name, self.log, self.fail, self.hang = name, log, fail, hang

    async def start(self) -> None:
        if self.hang:
            await asyncio.sleep(60)
        if self.fail:
            raise ConnectionError(f"{self.name} unreachable at 127.0.0.1:1")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def health(self) -> dict[str, str]:
        return {"name": self.name}


async def test_starts_by_stage_and_stops_in_reverse() -> None:
    log: list[str] = []
    coordinator = LifecycleCoordinator("svc")
    coordinator.register("loop", Recorder("loop", log), Stage.LOOPS)
    coordinator.register("conn", Recorder("conn", log), Stage.CONNECTIONS)
    coordinator.register("consumer", Recorder("consumer", log), Stage.CONSUMERS)
    coordinator.register("producer", Recorder("producer", log), Stage.PRODUCERS)
    await coordinator.start()
    await coordinator.start()  # idempotent
    assert (await coordinator.health())["conn"] == {"name": "conn"}
    await coordinator.stop()
    await coordinator.stop()
    assert log == [
        "start conn",
        "start producer",
        "start consumer",
        "start loop",
        "stop loop",
        "stop consumer",
        "stop producer",
        "stop conn",
    ]


async def test_failed_start_undoes_what_started_and_names_the_component() -> None:
    log: list[str] = []
    coordinator = LifecycleCoordinator("svc")
    coordinator.register("conn", Recorder("conn", log), Stage.CONNECTIONS)
    coordinator.register("producer", Recorder("producer", log), Stage.PRODUCERS)
    coordinator.register("redis", Recorder("redis", log, fail=True), Stage.CONSUMERS)
    coordinator.register("loop", Recorder("loop", log), Stage.LOOPS)
    with pytest.raises(ComponentStartError, match=r"redis failed to start: redis unreachable"):
        await coordinator.start()
    assert log == ["start conn", "start producer", "stop producer", "stop conn"]
    assert not coordinator.is_running


async def test_start_timeout_is_per_component() -> None:
    log: list[str] = []
    coordinator = LifecycleCoordinator("svc")
    coordinator.register("conn", Recorder("conn", log), Stage.CONNECTIONS)
    coordinator.register(
        "slow", Recorder("slow", log, hang=True), Stage.PRODUCERS, start_timeout_s=0.1
    )
    with pytest.raises(ComponentStartError, match=r"slow failed to start: no answer within 0\.1 s"):
        await coordinator.start()
    assert log == ["start conn", "stop conn"]


async def _sigterm_once_handled(before: object) -> None:
    """Send SIGTERM to this process only once ``serve()`` has replaced ``before``.

    A SIGTERM that arrived earlier would meet the default action and end pytest.
    """
    deadline = asyncio.get_running_loop().time() + 5
    while signal.getsignal(signal.SIGTERM) is before:
        assert asyncio.get_running_loop().time() < deadline, "serve() installed no handler"
        await asyncio.sleep(0.005)
    os.kill(os.getpid(), signal.SIGTERM)


async def test_serve_stops_on_sigterm_and_returns_zero() -> None:
    log: list[str] = []
    coordinator = LifecycleCoordinator("svc")
    coordinator.register("conn", Recorder("conn", log), Stage.CONNECTIONS)
    before = signal.getsignal(signal.SIGTERM)
    sender = asyncio.create_task(_sigterm_once_handled(before))
    code = await asyncio.wait_for(coordinator.serve(), 5)
    await sender
    assert code == 0 and log == ["start conn", "stop conn"]


async def test_orchestrator_stop_before_start_and_twice_is_harmless() -> None:
    orchestrator = ServiceOrchestrator("idle")
    await orchestrator.stop()
    await orchestrator.start()
    await orchestrator.stop()
    await orchestrator.stop()
    assert (await orchestrator.health())["status"] == "stopped"


async def test_serve_collects_young_objects_less_often_and_restores_the_threshold() -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    async def until() -> None:
        seen.append(gc.get_threshold())

    coordinator = LifecycleCoordinator("svc")
    coordinator.register("a", Recorder("a", []), Stage.LOOPS)
    await coordinator.serve(until(), install_signal_handlers=False)
    assert seen == [(max(SERVING_GC_THRESHOLD, before[0]), *before[1:])]
    assert gc.get_threshold() == before
    with serving_gc(None):
        assert gc.get_threshold() == before  # None leaves it alone
    gc.unfreeze()
