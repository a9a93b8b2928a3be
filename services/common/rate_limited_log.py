"""Log a recurring condition once, then at most once per interval with a count."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Warn about a condition at its first occurrence and then at most every ``interval_s``.

    Occurrences in between are counted and reported with the next line, so a
    flood (every signal rejected while the market is closed) gives one line a
    minute, not one per signal, and loses no count.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` under ``key`` if due; returns whether a line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += " (%d more since the last report)"
            args = (*args, skipped)
        self._logger.warning(message, *args)
        return True
