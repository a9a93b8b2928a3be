"""Run services on one lifecycle coordinator until SIGTERM/SIGINT, then stop them.

The coordinator starts the services in order (undoing the started ones when one
fails), serves until a signal or until a service asks to exit (its
``exit_on_unhealthy``), stops them in reverse order, and reports their health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from core.streaming.errors import BrokerUnavailableError, RedisUnavailableError
from core.streaming.orchestration.lifecycle_coordinator import (
    ComponentStartError,
    LifecycleCoordinator,
    Stage,
)
from services.common.history import StateRestoreError
from services.registry import RunnableService

#: Causes of a failed start that are reported as such, not as a crash.
STARTUP_ERRORS = (
    ComponentStartError,
    BrokerUnavailableError,
    RedisUnavailableError,
    StateRestoreError,
)


class StartupFailedError(RuntimeError):
    """A service could not start; what was started has been stopped again."""


class _ServiceComponent:
    """A runnable service as a coordinator component: its health is its orchestrator's."""

    def __init__(self, service: RunnableService) -> None:
        self.service = service

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    async def health(self) -> dict[str, Any]:
        return await self.service.orchestrator.health()


def services_coordinator(name: str, services: Sequence[RunnableService]) -> LifecycleCoordinator:
    """A coordinator over ``services``, started in the order given.

    A service bounds its own start and stop (connection and drain timeouts),
    so the coordinator waits for each as long as it takes.
    """
    coordinator = LifecycleCoordinator(name)
    for service in services:
        coordinator.register(
            service.orchestrator.service_name,
            _ServiceComponent(service),
            Stage.LOOPS,
            start_timeout_s=None,
            stop_timeout_s=None,
        )
    return coordinator


async def exit_requested(services: Sequence[RunnableService]) -> None:
    """Return when any service asks to exit (``exit_on_unhealthy``)."""
    waiters = [
        asyncio.ensure_future(s.orchestrator.coordinator.wait_stop_requested()) for s in services
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def exit_code(coordinator: LifecycleCoordinator, services: Sequence[RunnableService]) -> int:
    """0 after a signal or the end; non-zero when a service asked to exit."""
    codes = [s.orchestrator.coordinator.exit_code for s in services]
    return max([coordinator.exit_code, *codes])


async def serve(coordinator: LifecycleCoordinator, until: Awaitable[Any]) -> int:
    """``coordinator.serve(until)``, a failed start raised as :class:`StartupFailedError`."""
    try:
        return await coordinator.serve(until)
    except ComponentStartError as exc:
        if isinstance(exc.cause, STARTUP_ERRORS):
            raise StartupFailedError(str(exc)) from exc
        raise


async def run_until_stopped(services: Sequence[RunnableService]) -> int:
    """Start, wait for a signal or a service that asks to exit, stop; the exit code."""
    coordinator = services_coordinator("services", services)
    await serve(coordinator, exit_requested(services))
    return exit_code(coordinator, services)
