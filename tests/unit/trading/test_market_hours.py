"""MarketHoursChecker: session boundaries, weekends, holidays, clock injection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.config.settings import Settings, TradingSettings
from services.trading_engine.market_hours import IST, MarketHoursChecker

TUESDAY = date(2026, 1, 27)
REPUBLIC_DAY = date(2026, 1, 26)


def ist(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=IST)


def fixed(at: datetime) -> Callable[[], datetime]:
    return lambda: at


@pytest.fixture
def checker() -> MarketHoursChecker:
    return MarketHoursChecker()


@pytest.mark.parametrize(
    ("hour", "minute", "second", "is_open", "reason"),
    [
        (9, 14, 59, False, "before open 09:15 IST"),
        (9, 15, 0, True, "open until 15:30 IST"),
        (12, 0, 0, True, "open until 15:30 IST"),
        (15, 29, 59, True, "open until 15:30 IST"),
        (15, 30, 0, False, "after close 15:30 IST"),
        (0, 0, 0, False, "before open 09:15 IST"),
        (23, 59, 59, False, "after close 15:30 IST"),
    ],
)
def test_session_boundaries(
    checker: MarketHoursChecker, hour: int, minute: int, second: int, is_open: bool, reason: str
) -> None:
    status = checker.status(ist(TUESDAY, hour, minute, second))
    assert status.is_open is is_open
    assert status.reason == reason
    assert checker.is_market_open(ist(TUESDAY, hour, minute, second)) is is_open


def test_utc_instants_are_converted_to_ist(checker: MarketHoursChecker) -> None:
    open_utc = datetime(2026, 1, 27, 3, 45, tzinfo=UTC)
    assert checker.is_market_open(open_utc)
    assert not checker.is_market_open(open_utc - timedelta(seconds=1))
    assert not checker.is_market_open(datetime(2026, 1, 27, 10, 0, tzinfo=UTC))
    assert checker.is_market_open(datetime(2026, 1, 27, 9, 59, 59, tzinfo=UTC))


def test_other_timezones_are_accepted(checker: MarketHoursChecker) -> None:
    new_york = ZoneInfo("America/New_York")
    assert checker.is_market_open(datetime(2026, 1, 27, 0, 30, tzinfo=new_york))
    assert not checker.is_market_open(datetime(2026, 1, 27, 9, 30, tzinfo=new_york))


@pytest.mark.parametrize("day", [date(2026, 1, 31), date(2026, 2, 1)])
def test_weekend_is_closed_during_session_hours(checker: MarketHoursChecker, day: date) -> None:
    status = checker.status(ist(day, 11))
    assert not status.is_open
    assert status.reason == "weekend"


def test_configured_holiday_is_closed() -> None:
    checker = MarketHoursChecker(holidays=[TUESDAY], include_exchange_holidays=False)
    status = checker.status(ist(TUESDAY, 11))
    assert not status.is_open
    assert status.reason == "holiday: configured holiday"
    assert checker.is_market_open(ist(TUESDAY + timedelta(days=1), 11))


def test_exchange_holiday_from_library(checker: MarketHoursChecker) -> None:
    assert checker.uses_exchange_calendar
    status = checker.status(ist(REPUBLIC_DAY, 11))
    assert not status.is_open
    assert status.reason == "holiday: Republic Day"
    diwali = checker.status(datetime(2025, 10, 21, 6, 0, tzinfo=UTC))
    assert not diwali.is_open
    assert "Diwali" in diwali.reason


def test_exchange_holidays_can_be_left_out() -> None:
    checker = MarketHoursChecker(include_exchange_holidays=False)
    assert not checker.uses_exchange_calendar
    assert checker.is_market_open(ist(REPUBLIC_DAY, 11))
    assert checker.holiday_name(REPUBLIC_DAY) is None


def test_configured_holiday_takes_precedence_in_the_reason(checker: MarketHoursChecker) -> None:
    both = MarketHoursChecker(holidays=[REPUBLIC_DAY])
    assert both.holiday_name(REPUBLIC_DAY) == "configured holiday"
    assert checker.holiday_name(REPUBLIC_DAY) == "Republic Day"
    assert checker.holiday_name(TUESDAY) is None


def test_injected_clock_is_used_when_no_instant_is_given() -> None:
    now = [ist(TUESDAY, 9, 14, 59).astimezone(UTC)]
    checker = MarketHoursChecker(clock=lambda: now[0])
    assert not checker.is_market_open()
    now[0] += timedelta(seconds=1)
    assert checker.is_market_open()
    assert checker.status().at == now[0]


def test_explicit_instant_overrides_clock() -> None:
    checker = MarketHoursChecker(clock=fixed(ist(TUESDAY, 20)))
    assert not checker.is_market_open()
    assert checker.is_market_open(ist(TUESDAY, 10))


def test_naive_instant_is_rejected(checker: MarketHoursChecker) -> None:
    with pytest.raises(ValueError, match="naive"):
        checker.is_market_open(datetime(2026, 1, 27, 11, 0))


def test_naive_clock_is_rejected() -> None:
    checker = MarketHoursChecker(clock=lambda: datetime(2026, 1, 27, 11, 0))
    with pytest.raises(ValueError, match="clock returned a naive"):
        checker.status()


def test_always_open_ignores_weekends_holidays_and_hours() -> None:
    checker = MarketHoursChecker(holidays=[TUESDAY], always_open=True)
    for at in (ist(date(2026, 1, 31), 3), ist(TUESDAY, 11), ist(REPUBLIC_DAY, 22)):
        status = checker.status(at)
        assert status.is_open
        assert status.reason == "always open (configured)"


def test_from_settings_uses_holidays_switch_and_clock() -> None:
    settings = Settings(trading=TradingSettings(market_holidays=[TUESDAY]))
    checker = MarketHoursChecker.from_settings(settings, clock=fixed(ist(TUESDAY, 11)))
    assert checker.status().reason == "holiday: configured holiday"
    assert not checker.is_market_open(ist(REPUBLIC_DAY, 11))

    always = Settings(trading=TradingSettings(market_always_open=True))
    assert MarketHoursChecker.from_settings(always).is_market_open(ist(date(2026, 2, 1), 2))
