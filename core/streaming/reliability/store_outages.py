"""What a failed dedup store call does: counted, logged (rate-limited), then the policy.

Under ``fail_open`` the caller goes on without dedup; under ``fail_closed``
:class:`DedupUnavailableError` is raised so the caller pauses and retries. Kept
apart from the store so its calls read as the happy path plus one line on failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from core.streaming.reliability.dedup_scripts import WARN_INTERVAL_S, DedupUnavailableError
from core.streaming.reliability.sensors import Sensor

logger = logging.getLogger("core.streaming.reliability.dedup_store")

FailurePolicy = Literal["fail_open", "fail_closed"]


class StoreOutages:
    """Counts failed store calls, warns at most every ``WARN_INTERVAL_S``, applies the policy."""

    def __init__(self, policy: FailurePolicy, sensor: Sensor, clock: Callable[[], float]) -> None:
        if policy not in ("fail_open", "fail_closed"):
            raise ValueError(f"unknown failure_policy {policy!r}")
        self.policy: FailurePolicy = policy
        self.sensor = sensor
        self.count = 0
        self._clock = clock
        self._last_warning: float | None = None
        self._suppressed = 0

    def failed(self, operation: str, exc: BaseException, n: int, *, may_raise: bool = True) -> None:
        """Record a failed round trip covering ``n`` ids; raise under ``fail_closed``."""
        self.count += n
        self.sensor.on_dedup_unavailable(n)
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_INTERVAL_S:
            logger.warning(
                "dedup store unreachable or failing during %s (%s: %s); policy %s; "
                "%d similar warnings suppressed",
                operation,
                type(exc).__name__,
                exc,
                self.policy,
                self._suppressed,
            )
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        if may_raise and self.policy == "fail_closed":
            raise DedupUnavailableError(
                f"dedup store failed during {operation}: {type(exc).__name__}: {exc}"
            ) from exc
