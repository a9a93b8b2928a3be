"""Run one service (or several) until SIGTERM/SIGINT, then stop them gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Sequence

from core.streaming.errors import BrokerUnavailableError, RedisUnavailableError
from core.streaming.orchestration.lifecycle_coordinator import ComponentStartError
from services.common.history import StateRestoreError
from services.registry import RunnableService

logger = logging.getLogger(__name__)

STARTUP_ERRORS = (
    ComponentStartError,
    BrokerUnavailableError,
    RedisUnavailableError,
    StateRestoreError,
)


class StartupFailedError(RuntimeError):
    """A service could not start; what was started has been stopped again."""


async def start_all(services: Sequence[RunnableService]) -> None:
    """Start services in order; on failure stop the ones started and raise."""
    started: list[RunnableService] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
    except STARTUP_ERRORS as exc:
        await stop_all(started)
        raise StartupFailedError(str(exc)) from exc
    except BaseException:
        await stop_all(started)
        raise


async def stop_all(services: Sequence[RunnableService]) -> None:
    """Stop services in reverse order; one failing stop does not skip the others."""
    for service in reversed(services):
        try:
            await service.stop()
        except Exception:
            logger.exception("stopping %s failed", service.orchestrator.service_name)


def install_stop_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """Set ``stop`` on SIGTERM and SIGINT; returns the signals handled."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    return installed


async def run_until_stopped(services: Sequence[RunnableService]) -> int:
    """Start, wait for a signal or an unhealthy service that asks to exit, stop.

    Returns the process exit code: 0 after a signal, non-zero when a service
    asked to exit (``exit_on_unhealthy``).
    """
    stop = asyncio.Event()
    installed = install_stop_signals(stop)
    try:
        await start_all(services)
        # Start-up objects live as long as the process: keep the collector off them.
        gc.collect()
        gc.freeze()
        waiters = [asyncio.ensure_future(stop.wait())] + [
            asyncio.ensure_future(s.orchestrator.coordinator.wait_stop_requested())
            for s in services
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        await stop_all(services)
        return max((s.orchestrator.coordinator.exit_code for s in services), default=0)
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
