"""The engine's own limits, its market-closed log, expiry, metrics and final log."""

from __future__ import annotations

import logging
import math
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from core.config.settings import Settings, TradingSettings
from core.schemas.events import EventType, OrderType, SignalAction, TradingSignal
from services.common.rate_limited_log import RateLimitedLog
from services.trading_engine.execution_router import ExecutionRouter
from services.trading_engine.limits import EngineLimits
from services.trading_engine.market_hours import MarketHoursChecker
from services.trading_engine.orders import client_order_id
from services.trading_engine.service import TradingEngineService
from services.trading_engine.trader_factory import PaperTraderFactory
from tests.unit.trading.test_trading_engine_handlers import (
    CLOSED_AT,
    OPEN_AT,
    RELIANCE,
    Clock,
    FakePublisher,
    handle_signal,
    handle_tick,
    signal,
    tick,
)


def engine_with(clock: Clock, **trading: object) -> tuple[TradingEngineService, FakePublisher]:
    settings = Settings(broker_namespace="paper", trading=TradingSettings(**trading))  # type: ignore[arg-type]
    publisher = FakePublisher()
    service = TradingEngineService(
        settings.redpanda,
        settings,
        None,
        PaperTraderFactory.from_settings(settings, clock=clock),
        ExecutionRouter.from_settings(settings),
        MarketHoursChecker(clock=clock, include_exchange_holidays=False),
        clock=clock,
        publisher=publisher,
    )
    return service, publisher


def rejected(service: TradingEngineService, kind: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "tradestream_trading_signals_rejected_total",
        {"service": "trading_engine", "reason": kind},
    )
    return value or 0.0


def test_limits_check_quantity_price_band_and_notional() -> None:
    limits = EngineLimits(max_quantity=100, max_notional=10_000.0, price_band_pct=10.0)

    def sig(quantity: int, limit: float | None = None) -> TradingSignal:
        kind = OrderType.LIMIT if limit is not None else OrderType.MARKET
        return TradingSignal(
            strategy_id="s",
            instrument_token=1,
            symbol="X",
            action=SignalAction.BUY,
            quantity=quantity,
            order_type=kind,
            price=limit,
        )

    assert limits.check(sig(10), 100.0) is None
    assert limits.check(sig(10, 109.0), 100.0) is None
    assert limits.check(sig(10, 111.0), 100.0).kind == "price"  # type: ignore[union-attr]
    assert limits.check(sig(101), 100.0).kind == "quantity"  # type: ignore[union-attr]
    assert limits.check(sig(200 // 2, 105.0), 100.0).kind == "notional"  # type: ignore[union-attr]
    assert limits.check(sig(100), None) is None  # no price: the trader rejects ("no price")
    assert limits.check(sig(100, 200.0), None).kind == "notional"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        EngineLimits(0, 1.0, 1.0)


async def test_the_engine_refuses_absurd_validated_signals_with_a_reason() -> None:
    clock = Clock(OPEN_AT)
    service, pub = engine_with(clock)
    await service.trader_factory.initialize()
    await handle_tick(service, tick(2_900.0, clock()))
    huge = signal(quantity=18_446_744_073_709_551_615)
    far = signal(limit=1.7e308, strategy="mean_reversion")
    big = signal(quantity=5_000)  # 5,000 x 2,900 = 14.5M > 5M
    for n, sig in enumerate((huge, far, big)):
        await handle_signal(service, sig, f"corr-{n}")

    reasons = [s.data["reason"] for s in pub.of(EventType.REJECTED_SIGNAL)]
    assert reasons == [
        "quantity 18446744073709551615 above the engine's max 10000",
        "limit price 1.7e+308 is 5.86e+306% from the last price 2900 (band 20%)",
        "notional 1.45e+07 above the engine's max 5e+06",
    ]
    assert {s.data["stage"] for s in pub.sent} == {"trading_engine"}
    assert pub.of(EventType.ORDER_PLACED) == [] and service.traders() == {}
    assert (rejected(service, "quantity"), rejected(service, "price")) == (1.0, 1.0)
    assert rejected(service, "notional") == 1.0


async def test_market_closed_rejections_are_logged_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(CLOSED_AT)
    service, pub = engine_with(clock)
    now = [0.0]
    service._closed_log = RateLimitedLog(
        logging.getLogger("services.trading_engine.service"), clock=lambda: now[0]
    )
    await service.trader_factory.initialize()
    with caplog.at_level(logging.WARNING, logger="services.trading_engine.service"):
        for n in range(5):
            await handle_signal(service, signal(), f"corr-{n}")
            now[0] += 10.0
        now[0] = 61.0
        await handle_signal(service, signal(), "corr-late")
    lines = [r.getMessage() for r in caplog.records if "market closed" in r.getMessage()]
    assert len(lines) == 2
    assert "MARKET_ALWAYS_OPEN=true forces it open" in lines[0]
    assert lines[1].endswith("(4 more since the last report)")
    assert rejected(service, "market_closed") == 6.0
    assert len(pub.of(EventType.REJECTED_SIGNAL)) == 6


async def test_a_resting_order_past_its_lifetime_is_cancelled_with_an_event() -> None:
    clock = Clock(OPEN_AT)
    service, pub = engine_with(clock, resting_order_ttl_s=60.0)
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    sig = signal(limit=95.0, strategy="mean_reversion")
    await handle_signal(service, sig, "corr-rest")
    clock.advance(seconds=59)
    await handle_tick(service, tick(99.0, clock()))
    assert pub.of(EventType.ORDER_CANCELLED) == []
    clock.advance(seconds=2)
    await handle_tick(service, tick(99.0, clock()))

    [cancel] = pub.of(EventType.ORDER_CANCELLED)
    assert cancel.topic == "paper.executions"
    assert cancel.key == client_order_id(sig.signal_id, "paper")
    assert cancel.data["status"] == "CANCELLED"
    assert cancel.data["reason"] == "expired: resting for more than 60 s"
    assert cancel.correlation_id == "corr-rest"
    assert service.stats.orders_cancelled == 1
    assert service.snapshot().resting_orders == 0


async def test_positions_pnl_and_latency_are_on_metrics() -> None:
    clock = Clock(OPEN_AT)
    service, _ = engine_with(clock)
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, signal(quantity=10), "corr-a")
    await handle_tick(service, tick(110.0, clock() + timedelta(seconds=1)))

    registry = service.metrics.registry
    labels = {
        "service": "trading_engine",
        "namespace": "paper",
        "strategy": "momentum",
        "instrument": "RELIANCE",
    }
    assert registry.get_sample_value("tradestream_trading_position", labels) == 10
    unrealized = registry.get_sample_value("tradestream_trading_unrealized_pnl", labels)
    assert unrealized == pytest.approx(10 * (110.0 - 100.0 * 1.0005))
    book = {k: v for k, v in labels.items() if k != "instrument"}
    assert registry.get_sample_value("tradestream_trading_marked_pnl", book) == pytest.approx(
        unrealized
    )
    count = registry.get_sample_value(
        "tradestream_trading_signal_to_order_seconds_count", {"service": "trading_engine"}
    )
    fills = registry.get_sample_value(
        "tradestream_trading_order_to_fill_seconds_count", {"service": "trading_engine"}
    )
    assert (count, fills) == (1.0, 1.0)
    assert not math.isnan(service.metrics.signal_to_order.percentile(0.99))
    [row] = service.snapshot().positions
    assert (row.namespace, row.instrument, row.quantity) == ("paper", "RELIANCE", 10)
    assert row.instrument_token == RELIANCE


async def test_at_stop_the_engine_logs_books_and_the_resting_orders_it_leaves() -> None:
    clock = Clock(OPEN_AT)
    service, _ = engine_with(clock)
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, signal(quantity=10), "corr-a")
    resting = signal(limit=90.0, strategy="mean_reversion")
    await handle_signal(service, resting, "corr-b")
    with capture_logs() as logs:
        await service.stop()
    books = [e for e in logs if e["event"] == "final book"]
    assert [(b["namespace"], b["strategy"]) for b in books] == [("paper", "momentum")]
    assert books[0]["positions"] == {"RELIANCE": [10, 100.05]}
    assert books[0]["marked_pnl"] == pytest.approx(10 * (100.0 - 100.05))
    [left] = [e for e in logs if e["event"] == "resting order left"]
    assert left["client_order_id"] == client_order_id(resting.signal_id, "paper")
    assert (left["instrument"], left["limit_price"], left["quantity"]) == ("RELIANCE", 90.0, 10)
