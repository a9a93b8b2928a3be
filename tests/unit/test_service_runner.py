"""services.cli.runner: services on one lifecycle coordinator (start order, undo, exit, signals)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal

import pytest

from core.streaming.errors import BrokerUnavailableError
from core.streaming.orchestration.lifecycle_coordinator import (
    ComponentStartError,
    LifecycleCoordinator,
)
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from services.cli.runner import StartupFailedError, run_until_stopped, services_coordinator


class FakeService:
    """A runnable service around a real (empty) orchestrator that logs its start and stop."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        fail: BaseException | None = None,
        started: asyncio.Event | None = None,
        slow_s: float = 0.0,
    ) -> None:
        self.name, self.log, self.fail, self.slow_s = name, log, fail, slow_s
        self.started = started
        self.up = asyncio.Event()
        self.orchestrator = ServiceOrchestrator(name)

    async def start(self) -> None:
        if self.started is not None:
            self.started.set()
        await asyncio.sleep(self.slow_s)
        if self.fail is not None:
            raise self.fail
        await self.orchestrator.start()
        self.log.append(f"start {self.name}")
        self.up.set()

    async def stop(self) -> None:
        await self.orchestrator.stop()
        self.log.append(f"stop {self.name}")


async def test_a_service_that_cannot_connect_stops_the_started_ones_and_says_why() -> None:
    log: list[str] = []
    down = BrokerUnavailableError("kafka at 127.0.0.1:1 unreachable")
    services = [FakeService("a", log), FakeService("b", log, fail=down)]
    with pytest.raises(StartupFailedError, match=r"127\.0\.0\.1:1 unreachable"):
        await run_until_stopped(services)
    assert log == ["start a", "stop a"]


async def test_a_bug_in_a_start_is_not_reported_as_a_startup_failure() -> None:
    log: list[str] = []
    services = [FakeService("a", log), FakeService("b", log, fail=TypeError("bad argument"))]
    with pytest.raises(ComponentStartError) as raised:
        await run_until_stopped(services)
    assert isinstance(raised.value.cause, TypeError)
    assert log == ["start a", "stop a"]


async def test_a_service_asking_to_exit_stops_all_with_its_exit_code() -> None:
    log: list[str] = []
    services = [FakeService("a", log), FakeService("b", log)]
    run = asyncio.create_task(run_until_stopped(services))
    await asyncio.wait_for(services[1].up.wait(), 5)
    services[1].orchestrator.coordinator.request_stop(3)
    code = await asyncio.wait_for(run, 5)
    assert code == 3
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_sigterm_during_the_start_stops_the_services_once_they_are_up() -> None:
    log: list[str] = []
    starting = asyncio.Event()
    services = [FakeService("a", log, started=starting, slow_s=0.3), FakeService("b", log)]
    before = signal.getsignal(signal.SIGTERM)
    run = asyncio.create_task(run_until_stopped(services))
    await asyncio.wait_for(starting.wait(), 5)
    assert signal.getsignal(signal.SIGTERM) is not before, "no handler while starting"
    os.kill(os.getpid(), signal.SIGTERM)
    code = await asyncio.wait_for(run, 5)
    assert code == 0
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_health_is_each_services_orchestrator_report() -> None:
    log: list[str] = []
    services = [FakeService("a", log), FakeService("b", log)]
    coordinator = services_coordinator("pipeline", services)
    await coordinator.start()
    try:
        report = await coordinator.health()
    finally:
        await coordinator.stop()
    assert list(report) == ["a", "b"]
    assert [r["service"] for r in report.values()] == ["a", "b"]
    assert all(r["status"] == "running" for r in report.values())


async def test_serve_closes_the_until_coroutine_when_the_start_fails() -> None:
    coordinator = LifecycleCoordinator("svc")
    coordinator.register("broken", FakeService("broken", [], fail=OSError("refused")), 10)

    async def until() -> None:
        await asyncio.sleep(60)

    waiting = until()
    with pytest.raises(ComponentStartError):
        await coordinator.serve(waiting, install_signal_handlers=False)
    assert inspect.getcoroutinestate(waiting) == inspect.CORO_CLOSED
