"""Starts components in dependency order, stops them in reverse, reports health.

A component is anything with ``async start()``, ``async stop()`` and optionally
``health()`` (plain or async). Components are registered with a stage
(connections, producers, consumers, loops); start goes stage by stage in
registration order, and a failure stops everything already started before the
error (naming the component and the cause) is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)


#: Generation-0 collection threshold while serving (Python's default is 700).
SERVING_GC_THRESHOLD = 10_000


@contextlib.contextmanager
def serving_gc(threshold: int | None = SERVING_GC_THRESHOLD) -> Iterator[None]:
    """Collect and freeze what exists now, and collect young objects less often, until exit.

    Objects made during the start live as long as the process: ``gc.freeze``
    keeps later collections from walking them. A flow keeps thousands of
    messages in flight, so at Python's default threshold (a collection every 700
    net new objects) each young-generation collection walks live in-flight
    messages for nothing: about a tenth of the CPU per message at full rate
    (``docs/performance.md``). A higher threshold only makes collections rarer;
    cyclic garbage is still collected. ``None`` leaves the threshold alone.
    The previous thresholds come back on exit.
    """
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    if threshold is not None and threshold > previous[0]:
        gc.set_threshold(threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


class Stage(IntEnum):
    """Start order of component kinds; stop runs in reverse."""

    CONNECTIONS = 10
    PRODUCERS = 20
    CONSUMERS = 30
    LOOPS = 40
    ENDPOINTS = 50


@runtime_checkable
class Component(Protocol):
    """What the coordinator manages."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ComponentStartError(RuntimeError):
    """A component failed to start; everything started before it was stopped."""

    def __init__(self, component: str, cause: BaseException) -> None:
        super().__init__(f"{component} failed to start: {cause}")
        self.component = component
        self.cause = cause


@dataclass
class _Entry:
    name: str
    component: Component
    stage: Stage
    start_timeout_s: float | None
    stop_timeout_s: float | None
    started: bool = False


class LifecycleCoordinator:
    """Owns the start/stop order and aggregated health of a service's components."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: list[_Entry] = []
        self._running = False
        self._stop_requested = asyncio.Event()
        self.exit_code = 0

    def register(
        self,
        name: str,
        component: Component,
        stage: Stage,
        *,
        start_timeout_s: float | None = 60.0,
        stop_timeout_s: float | None = 60.0,
    ) -> None:
        """Add a component; names must be unique. A ``None`` timeout waits without a limit."""
        if any(e.name == name for e in self._entries):
            raise ValueError(f"component {name!r} is already registered")
        self._entries.append(_Entry(name, component, stage, start_timeout_s, stop_timeout_s))

    @property
    def components(self) -> list[str]:
        """Component names in start order."""
        return [e.name for e in self._ordered()]

    def _ordered(self) -> list[_Entry]:
        return sorted(self._entries, key=lambda e: e.stage)

    @property
    def is_running(self) -> bool:
        """True after a complete ``start()`` and until ``stop()``."""
        return self._running

    async def start(self) -> None:
        """Start every component in order; on failure undo and raise. Idempotent."""
        if self._running:
            return
        self._stop_requested = asyncio.Event()
        for entry in self._ordered():
            try:
                await asyncio.wait_for(entry.component.start(), entry.start_timeout_s)
            except BaseException as exc:
                cause: BaseException = exc
                if isinstance(exc, TimeoutError):
                    cause = TimeoutError(f"no answer within {entry.start_timeout_s:g} s")
                logger.error("%s: %s failed to start: %s", self.name, entry.name, cause)
                await self._stop_started()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise ComponentStartError(entry.name, cause) from exc
            entry.started = True
        self._running = True

    async def stop(self) -> None:
        """Stop every started component in reverse order. Idempotent, never raises."""
        self._running = False
        await self._stop_started()

    async def _stop_started(self) -> None:
        for entry in reversed(self._ordered()):
            if not entry.started:
                continue
            entry.started = False
            try:
                await asyncio.wait_for(entry.component.stop(), entry.stop_timeout_s)
            except Exception:
                logger.exception("%s: stopping %s failed", self.name, entry.name)

    async def health(self) -> dict[str, Any]:
        """Each component's health report (or whether it is started)."""
        report: dict[str, Any] = {}
        for entry in self._ordered():
            health: Callable[[], Any] | None = getattr(entry.component, "health", None)
            if health is None:
                report[entry.name] = {"started": entry.started}
                continue
            try:
                value = health()
                if inspect.isawaitable(value):
                    value = await value
                report[entry.name] = value
            except Exception as exc:
                report[entry.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return report

    async def wait_stop_requested(self) -> int:
        """Wait until ``request_stop`` is called; returns the exit code asked for."""
        await self._stop_requested.wait()
        return self.exit_code

    def request_stop(self, exit_code: int = 0) -> None:
        """Ask ``serve()`` to stop (from a signal handler or a supervisor)."""
        self.exit_code = max(self.exit_code, exit_code)
        self._stop_requested.set()

    async def serve(
        self,
        until: Awaitable[Any] | None = None,
        *,
        install_signal_handlers: bool = True,
        gc_threshold: int | None = SERVING_GC_THRESHOLD,
    ) -> int:
        """Start, run until SIGTERM/SIGINT (or ``until`` completes), stop; returns exit code.

        Signals are handled from before the start: one that arrives while
        components start stops them once they are up. While serving, the
        garbage collector is set up by :func:`serving_gc` (``gc_threshold``).
        """
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        waiters: list[asyncio.Future[Any]] = []
        try:
            await self.start()
            waiters.append(asyncio.ensure_future(self._stop_requested.wait()))
            if until is not None:
                waiters.append(asyncio.ensure_future(until))
            with serving_gc(gc_threshold):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            if not waiters and inspect.iscoroutine(until):
                until.close()  # the start failed: it never ran
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.exit_code
