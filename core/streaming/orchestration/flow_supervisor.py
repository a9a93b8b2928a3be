"""Runs one flow's fetch loop and restarts it, telling outages from crashes.

A dependency that goes away (the broker, the dedup store) is an *outage*: the
loop is restarted with backoff for as long as it lasts, the flow reports not
ready, and the restart budget is not touched, so an outage never leaves a flow
dead while the process looks alive. Anything else is a *crash*: logged with its
traceback, counted, the flow is reset without losing messages, and restarted
with backoff; past ``max_restarts`` within one burst the supervisor gives up and
the service reports unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, wait_exponential

from core.streaming.clients import BROKER_ERRORS, REDIS_ERRORS, TRANSIENT_CLIENT_ERRORS
from core.streaming.errors import BrokerUnavailableError, RedisUnavailableError
from core.streaming.orchestration.consumer_flow import ConsumerFlow
from core.streaming.reliability.deduplication_manager import DedupUnavailableError

logger = logging.getLogger(__name__)

#: Errors of a dependency being away: retried as long as they last.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_CLIENT_ERRORS,
    *BROKER_ERRORS,
    *REDIS_ERRORS,
    DedupUnavailableError,
    BrokerUnavailableError,
    RedisUnavailableError,
)

# The fetch loop runs no handler: cancelling it after a short wait loses nothing
# (what it fetched and did not hand out is fetched again).
_LOOP_STOP_WAIT_S = 2.0


class FlowSupervisor:
    """Runs one flow's loop, restarting it after outages and crashes."""

    def __init__(
        self,
        flow: ConsumerFlow,
        *,
        max_restarts: int,
        initial_backoff_s: float,
        max_backoff_s: float,
        on_gave_up: Callable[[FlowSupervisor], None],
    ) -> None:
        self.flow = flow
        self.max_restarts = max_restarts
        self._wait = wait_exponential(multiplier=initial_backoff_s, max=max_backoff_s)
        self._on_gave_up = on_gave_up
        self.restarts = 0
        self.outages = 0
        self.stable_after_s = 300.0
        self._last_crash = time.monotonic()
        self.gave_up = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start supervising (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._supervise(), name=f"loop-{self.flow.name}")

    @property
    def alive(self) -> bool:
        """True while the loop runs and has not been given up."""
        return self._task is not None and not self._task.done() and not self.gave_up

    async def _supervise(self) -> None:
        flow = self.flow
        failures = 0
        last_failure = 0.0
        while True:
            try:
                await flow.run()
                return
            except asyncio.CancelledError:
                raise
            except OUTAGE_ERRORS as exc:
                self.outages += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                flow.outage = self.last_error
                logger.warning(
                    "flow %s: a dependency is unavailable (%s); retrying, not ready meanwhile",
                    flow.name,
                    self.last_error,
                )
            except Exception as exc:
                if not self._crashed(exc):
                    return
            try:
                await flow.reset_after_crash()
            except Exception:
                logger.exception("flow %s: reset after a failure failed", flow.name)
            now = time.monotonic()
            failures = 1 if now - last_failure > self.stable_after_s / 5 else failures + 1
            last_failure = now
            await asyncio.sleep(self._backoff(failures))

    def _crashed(self, exc: Exception) -> bool:
        """Count a crash; False when the budget is spent and the supervisor gives up."""
        now = time.monotonic()
        if now - self._last_crash > self.stable_after_s:
            self.restarts = 0  # the budget is per burst of crashes, not per lifetime
        self._last_crash = now
        self.restarts += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "flow %s: consumption loop crashed (restart %d of %d)",
            self.flow.name,
            self.restarts,
            self.max_restarts,
            exc_info=exc,
        )
        self.flow.sensor.on_loop_restart()
        if self.restarts > self.max_restarts:
            self.gave_up = True
            self._on_gave_up(self)
            return False
        return True

    def _backoff(self, attempt: int) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))

    async def stop(self) -> None:
        """Ask the loop to return after its current fetch, then wait for it."""
        self.flow.request_stop()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _LOOP_STOP_WAIT_S)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:
            logger.exception("flow %s: loop ended with an error", self.flow.name)

    def health(self) -> dict[str, Any]:
        """Whether the loop lives, its restarts, outages and last error."""
        return {
            "alive": self.alive,
            "restarts": self.restarts,
            "outages": self.outages,
            "gave_up": self.gave_up,
            "last_error": self.last_error,
        }
