"""When the NSE regular session is open, so the engine trades only during it.

The session is 09:15 to 15:30 Asia/Kolkata, Monday to Friday, as a half-open
interval: 09:15:00 is open and 15:30:00 is closed (the closing auction that
follows is not continuous trading). Holidays are the configured dates plus,
unless turned off, the NSE calendar of the ``holidays`` package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from core.config.settings import Settings
from core.schemas.events import utc_now

IST = ZoneInfo("Asia/Kolkata")
SESSION_OPEN = time(9, 15)
SESSION_CLOSE = time(15, 30)
CONFIGURED_HOLIDAY = "configured holiday"

_OPEN_TEXT = SESSION_OPEN.strftime("%H:%M")
_CLOSE_TEXT = SESSION_CLOSE.strftime("%H:%M")


@dataclass(frozen=True)
class MarketStatus:
    """Whether the market is open at ``at`` and, in words, why."""

    is_open: bool
    reason: str
    at: datetime


def exchange_holidays() -> Mapping[date, str] | None:
    """The NSE calendar of the ``holidays`` package, or None if the package lacks one.

    The mapping fills in each year on its first lookup.
    """
    try:
        import holidays
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    factory: Callable[[str], Mapping[date, str]] | None = getattr(
        holidays, "financial_holidays", None
    )
    if factory is None:  # pragma: no cover - releases before financial calendars
        return None
    try:
        return factory("XNSE")
    except NotImplementedError:  # pragma: no cover - a release without XNSE
        return None


class MarketHoursChecker:
    """Answers whether the NSE regular session is open at a given instant."""

    def __init__(
        self,
        holidays: Iterable[date] = (),
        clock: Callable[[], datetime] | None = None,
        always_open: bool = False,
        include_exchange_holidays: bool = True,
    ) -> None:
        self._holidays = frozenset(holidays)
        self._clock = clock or utc_now
        self._always_open = always_open
        self._exchange = exchange_holidays() if include_exchange_holidays else None

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], datetime] | None = None
    ) -> MarketHoursChecker:
        """A checker with the configured holidays and the always-open switch."""
        return cls(
            holidays=settings.trading.market_holidays,
            clock=clock,
            always_open=settings.trading.market_always_open,
        )

    @property
    def uses_exchange_calendar(self) -> bool:
        """True when the library's NSE holidays are consulted."""
        return self._exchange is not None

    def is_market_open(self, at: datetime | None = None) -> bool:
        """True if the regular session is open at ``at`` (default: the clock's now)."""
        return self.status(at).is_open

    def holiday_name(self, day: date) -> str | None:
        """The holiday's name if ``day`` (an IST calendar date) is a holiday."""
        if day in self._holidays:
            return CONFIGURED_HOLIDAY
        if self._exchange is not None:
            return self._exchange.get(day)
        return None

    def status(self, at: datetime | None = None) -> MarketStatus:
        """Open or closed at ``at`` (default: the clock's now), with the reason."""
        when = self._instant(at)
        if self._always_open:
            return MarketStatus(True, "always open (configured)", when)
        local = when.astimezone(IST)
        if local.weekday() >= 5:
            return MarketStatus(False, "weekend", when)
        name = self.holiday_name(local.date())
        if name is not None:
            return MarketStatus(False, f"holiday: {name}", when)
        clock_time = local.time().replace(tzinfo=None)
        if clock_time < SESSION_OPEN:
            return MarketStatus(False, f"before open {_OPEN_TEXT} IST", when)
        if clock_time >= SESSION_CLOSE:
            return MarketStatus(False, f"after close {_CLOSE_TEXT} IST", when)
        return MarketStatus(True, f"open until {_CLOSE_TEXT} IST", when)

    def _instant(self, at: datetime | None) -> datetime:
        when = self._clock() if at is None else at
        if when.tzinfo is None or when.utcoffset() is None:
            source = "clock returned" if at is None else "at is"
            raise ValueError(f"{source} a naive datetime; a timezone-aware one is required")
        return when
