"""TradingEngineService handlers: plain dicts in, published events out, no broker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from core.config.settings import Settings, TradingSettings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    ValidatedSignal,
    generate_uuid7,
)
from core.streaming.correlation import CorrelationContext
from core.streaming.errors import PermanentError
from services.trading_engine.execution_router import ExecutionRouter
from services.trading_engine.market_hours import IST, MarketHoursChecker
from services.trading_engine.orders import client_order_id
from services.trading_engine.service import TradingEngineService
from services.trading_engine.trader_factory import PaperTraderFactory

WEDNESDAY = date(2026, 11, 25)
OPEN_AT = datetime(2026, 11, 25, 10, 30, tzinfo=IST)
CLOSED_AT = datetime(2026, 11, 25, 16, 0, tzinfo=IST)
RELIANCE = 738561
SLIPPAGE = 5.0 / 10_000


class Clock:
    """A settable clock shared by market hours, traders and the engine."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass(frozen=True)
class Sent:
    topic: str
    key: str | bytes | None
    data: dict[str, Any]
    event_type: str
    correlation_id: str | None
    causation_id: str | None


class FakePublisher:
    """Records sends; can be told to fail the next ``fail_next`` of them."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.fail_next = 0

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        data: Any,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
    ) -> str:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker unreachable")
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data)
        kind = event_type.value if isinstance(event_type, Enum) else str(event_type)
        self.sent.append(Sent(topic, key, payload, kind, correlation_id, causation_id))
        return generate_uuid7()

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def of(self, event_type: EventType) -> list[Sent]:
        return [s for s in self.sent if s.event_type == event_type.value]


@pytest.fixture
def clock() -> Clock:
    return Clock(OPEN_AT)


def make_engine(
    clock: Clock,
    *,
    routes: dict[str, list[str]] | None = None,
    holidays: tuple[date, ...] = (),
) -> tuple[TradingEngineService, FakePublisher]:
    settings = Settings(
        broker_namespace="paper",
        trading=TradingSettings(strategy_routes=routes or {}, market_holidays=list(holidays)),
    )
    factory = PaperTraderFactory.from_settings(settings, clock=clock)
    publisher = FakePublisher()
    engine = TradingEngineService(
        settings.redpanda,
        settings,
        None,
        factory,
        ExecutionRouter.from_settings(settings),
        MarketHoursChecker(holidays=holidays, clock=clock, include_exchange_holidays=False),
        clock=clock,
        publisher=publisher,
    )
    return engine, publisher


@pytest.fixture
async def engine(clock: Clock) -> tuple[TradingEngineService, FakePublisher]:
    service, publisher = make_engine(clock)
    await service.trader_factory.initialize()
    return service, publisher


def signal(
    action: SignalAction = SignalAction.BUY,
    *,
    token: int = RELIANCE,
    symbol: str = "RELIANCE",
    quantity: int = 10,
    limit: float | None = None,
    strategy: str = "momentum",
    signal_id: str | None = None,
) -> TradingSignal:
    return TradingSignal(
        signal_id=signal_id or generate_uuid7(),
        strategy_id=strategy,
        instrument_token=token,
        symbol=symbol,
        action=action,
        quantity=quantity,
        order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET,
        price=limit,
    )


def validated(sig: TradingSignal) -> dict[str, Any]:
    return {
        "id": generate_uuid7(),
        "type": EventType.VALIDATED_SIGNAL.value,
        "source": "signal_validator",
        "data": ValidatedSignal(original_signal=sig).model_dump(mode="json"),
    }


def tick(price: float, at: datetime, *, token: int = RELIANCE, symbol: str = "RELIANCE") -> dict:
    return {
        "id": generate_uuid7(),
        "type": EventType.MARKET_TICK.value,
        "source": "market_data",
        "data": MarketTick(
            instrument_token=token, symbol=symbol, last_price=price, timestamp=at
        ).model_dump(mode="json"),
    }


async def handle_signal(service: TradingEngineService, sig: TradingSignal, corr: str) -> None:
    with CorrelationContext.scope("test", "signal", correlation_id=corr, causation_id="sig-evt"):
        await service._handle_validated_signal(validated(sig))


async def handle_tick(service: TradingEngineService, message: dict[str, Any]) -> None:
    with CorrelationContext.scope("test", "tick", causation_id=message["id"]):
        await service._handle_market_tick(message)


# ---------------------------------------------------------------------- market hours


async def test_open_market_market_order_is_placed_then_filled(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    sig = signal()
    await handle_signal(service, sig, "corr-open")

    oid = client_order_id(sig.signal_id, "paper")
    assert [(s.topic, s.event_type, s.key) for s in pub.sent] == [
        ("paper.orders", "order.placed", oid),
        ("paper.executions", "order.filled", oid),
    ]
    placed, filled = pub.sent
    assert placed.data["status"] == "PLACED" and placed.data["fill_price"] is None
    assert filled.data["status"] == "FILLED"
    assert filled.data["fill_price"] == pytest.approx(100.0 * (1 + SLIPPAGE))
    assert {s.correlation_id for s in pub.sent} == {"corr-open"}
    assert {s.causation_id for s in pub.sent} == {"sig-evt"}
    stats = service.stats
    assert (stats.signals_handled, stats.orders_placed, stats.orders_filled) == (1, 1, 1)
    assert stats.signals_rejected == stats.orders_rejected == 0


async def test_closed_market_publishes_a_rejection_and_counts_it(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    clock.now = CLOSED_AT
    sig = signal(strategy="momentum")
    await handle_signal(service, sig, "corr-closed")

    [rejection] = pub.sent
    assert rejection.topic == "paper.signals.rejected"
    assert rejection.event_type == "signal.rejected"
    assert rejection.key == "momentum"
    assert rejection.correlation_id == "corr-closed"
    assert rejection.data["stage"] == "trading_engine"
    assert rejection.data["reason"] == "market closed: after close 15:30 IST"
    assert rejection.data["signal_id"] == sig.signal_id
    assert rejection.data["original_signal"]["signal_id"] == sig.signal_id
    assert service.stats.signals_rejected == 1
    assert service.stats.orders_placed == 0
    assert service.traders() == {}
    sample = service.metrics.registry.get_sample_value(
        "tradestream_trading_signals_rejected_total",
        {"service": "trading_engine", "reason": "market_closed"},
    )
    assert sample == 1.0


async def test_holiday_rejects_with_the_holiday_as_reason(clock: Clock) -> None:
    service, pub = make_engine(clock, holidays=(WEDNESDAY,))
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, signal(), "corr-h")

    [rejection] = pub.sent
    assert rejection.data["reason"] == "market closed: holiday: configured holiday"
    assert service.stats.signals_rejected == 1


async def test_a_rejected_signal_stays_rejected_when_redelivered_after_the_open(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    clock.now = datetime(2026, 11, 25, 9, 0, tzinfo=IST)
    sig = signal()
    await handle_signal(service, sig, "corr-early")
    clock.now = OPEN_AT
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, sig, "corr-early")

    assert [s.event_type for s in pub.sent] == ["signal.rejected"]
    assert pub.sent[0].data["reason"] == "market closed: before open 09:15 IST"


# ---------------------------------------------------------------------- routing


async def test_routes_to_every_namespace_with_distinct_client_order_ids(clock: Clock) -> None:
    service, pub = make_engine(clock, routes={"momentum": ["paper", "live", "shadow"]})
    await service.trader_factory.initialize()
    await handle_tick(service, tick(250.0, clock()))
    sig = signal()
    await handle_signal(service, sig, "corr-r")

    placed = pub.of(EventType.ORDER_PLACED)
    assert [p.topic for p in placed] == ["paper.orders", "live.orders", "shadow.orders"]
    ids = [p.key for p in placed]
    assert ids == [client_order_id(sig.signal_id, ns) for ns in ("paper", "live", "shadow")]
    assert len(set(ids)) == 3
    fills = pub.of(EventType.ORDER_FILLED)
    assert [f.topic for f in fills] == ["paper.executions", "live.executions", "shadow.executions"]
    assert set(service.traders()) == {"paper", "live", "shadow"}
    assert service.stats.orders_placed == 3


async def test_unrouted_strategy_trades_on_the_broker_namespace(clock: Clock) -> None:
    service, pub = make_engine(clock, routes={"momentum": ["live"]})
    await service.trader_factory.initialize()
    await handle_tick(service, tick(250.0, clock()))
    await handle_signal(service, signal(strategy="mean_reversion"), "corr-u")

    assert [p.topic for p in pub.of(EventType.ORDER_PLACED)] == ["paper.orders"]


# ---------------------------------------------------------------------- prices


async def test_a_zero_price_is_a_price(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(0.0, clock()))
    assert service.last_prices[RELIANCE] == 0.0
    await handle_signal(service, signal(), "corr-z")

    [filled] = pub.of(EventType.ORDER_FILLED)
    assert filled.data["fill_price"] == 0.0


async def test_a_tick_with_token_zero_is_recorded_and_traded(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(42.5, clock(), token=0, symbol="ZERO"))
    quote = service.quote(0)
    assert quote is not None and quote.price == 42.5 and quote.at == clock()
    await handle_signal(service, signal(token=0, symbol="ZERO"), "corr-0")

    [filled] = pub.of(EventType.ORDER_FILLED)
    assert filled.data["instrument_token"] == 0
    assert filled.data["fill_price"] == pytest.approx(42.5 * (1 + SLIPPAGE))


async def test_a_stale_price_rejects_the_order_with_a_reason(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    clock.advance(seconds=120)
    sig = signal()
    await handle_signal(service, sig, "corr-stale")

    [rejected] = pub.sent
    assert rejected.topic == "paper.executions"
    assert rejected.event_type == "order.rejected"
    assert rejected.key == client_order_id(sig.signal_id, "paper")
    assert rejected.data["status"] == "REJECTED"
    assert rejected.data["reason"].startswith("stale price for RELIANCE: 120.0s old")
    assert rejected.correlation_id == "corr-stale"
    assert service.stats.orders_rejected == 1 and service.stats.orders_placed == 0


async def test_no_price_rejects_the_order(
    engine: tuple[TradingEngineService, FakePublisher],
) -> None:
    service, pub = engine
    await handle_signal(service, signal(), "corr-none")

    [rejected] = pub.sent
    assert rejected.event_type == "order.rejected"
    assert rejected.data["reason"] == "no price for RELIANCE"


async def test_a_tick_without_timestamp_is_stamped_by_the_engine_clock(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, _ = engine
    message = tick(101.0, clock())
    del message["data"]["timestamp"]
    clock.advance(seconds=5)
    await handle_tick(service, message)
    assert service.price_times[RELIANCE] == clock()


async def test_an_older_tick_does_not_overwrite_a_newer_price(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, _ = engine
    await handle_tick(service, tick(101.0, clock()))
    await handle_tick(service, tick(99.0, clock() - timedelta(seconds=1)))
    assert service.last_prices[RELIANCE] == 101.0
    assert service.stats.out_of_order_ticks == 1


# ---------------------------------------------------------------------- limit orders


async def test_a_limit_order_rests_then_fills_on_a_crossing_tick(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    sig = signal(limit=99.0)
    await handle_signal(service, sig, "corr-limit")
    oid = client_order_id(sig.signal_id, "paper")

    [placed] = pub.sent
    assert (placed.topic, placed.event_type, placed.key) == ("paper.orders", "order.placed", oid)
    assert placed.data["limit_price"] == 99.0
    assert placed.data["reason"].startswith("resting:")
    assert service.snapshot().resting_orders == 1

    clock.advance(seconds=1)
    await handle_tick(service, tick(99.5, clock()))
    assert len(pub.sent) == 1

    clock.advance(seconds=1)
    crossing = tick(98.5, clock())
    await handle_tick(service, crossing)
    [_, filled] = pub.sent
    assert (filled.topic, filled.event_type, filled.key) == (
        "paper.executions",
        "order.filled",
        oid,
    )
    assert filled.data["fill_price"] == pytest.approx(min(99.0, 98.5 * (1 + SLIPPAGE)))
    assert filled.correlation_id == "corr-limit"
    assert filled.causation_id == crossing["id"]
    assert service.stats.orders_filled == 1
    assert service.snapshot().resting_orders == 0


# ---------------------------------------------------------------------- idempotency


async def test_the_same_signal_twice_yields_one_order(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    sig = signal()
    await handle_signal(service, sig, "corr-dup")
    await handle_signal(service, sig, "corr-dup")

    assert [s.event_type for s in pub.sent] == ["order.placed", "order.filled"]
    assert service.stats.duplicate_orders == 1
    assert service.stats.orders_placed == 1
    assert service.stats.signals_handled == 2


async def test_a_resting_order_redelivered_publishes_nothing_and_keeps_its_chain(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    sig = signal(limit=90.0)
    await handle_signal(service, sig, "corr-rest")
    await handle_signal(service, sig, "corr-other")
    await handle_tick(service, tick(89.0, clock()))

    assert [s.event_type for s in pub.sent] == ["order.placed", "order.filled"]
    assert {s.correlation_id for s in pub.sent} == {"corr-rest"}


async def test_events_of_a_failed_send_go_out_once_on_retry(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    await handle_tick(service, tick(100.0, clock()))
    sig = signal()
    pub.fail_next = 2
    message = validated(sig)
    with CorrelationContext.scope("test", "signal", correlation_id="corr-retry"):
        with pytest.raises(ConnectionError):
            await service._handle_validated_signal(message)
        assert service.pending_events == 2
        with pytest.raises(ConnectionError):
            await service._handle_validated_signal(message)
        await service._handle_validated_signal(message)

    assert [s.event_type for s in pub.sent] == ["order.placed", "order.filled"]
    assert {s.correlation_id for s in pub.sent} == {"corr-retry"}
    assert service.pending_events == 0
    assert service.stats.orders_placed == 1


async def test_a_retry_completes_the_missing_namespace_even_after_the_close(clock: Clock) -> None:
    service, pub = make_engine(clock, routes={"momentum": ["paper", "live"]})
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    sig = signal()
    live = service.trader_factory.get_trader("live")
    calls = 0
    original = live.place_order

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("trader timed out")
        return await original(*args, **kwargs)

    live.place_order = flaky  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await handle_signal(service, sig, "corr-p")
    clock.now = CLOSED_AT
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, sig, "corr-p")

    placed = pub.of(EventType.ORDER_PLACED)
    assert [p.topic for p in placed] == ["paper.orders", "live.orders"]
    assert pub.of(EventType.REJECTED_SIGNAL) == []


# ---------------------------------------------------------------------- other input


def envelope(kind: str, data: Any) -> dict[str, Any]:
    return {"id": generate_uuid7(), "type": kind, "source": "test", "data": data}


async def test_other_event_types_are_dead_lettered_with_the_reason(
    engine: tuple[TradingEngineService, FakePublisher], clock: Clock
) -> None:
    service, pub = engine
    with pytest.raises(PermanentError, match=r"unexpected event type 'signal.raw' on paper"):
        await service._handle_validated_signal(envelope("signal.raw", {}))
    with pytest.raises(PermanentError, match=r"'order.placed' on market.ticks"):
        await service._handle_market_tick(envelope("order.placed", {}))
    assert pub.sent == []


@pytest.mark.parametrize(
    "value",
    [
        {"id": "cust-42", "qty": 1},
        {"type": "signal.validated", "data": {}},
        {"id": "e-1", "type": "signal.validated", "source": "x", "data": "not an object"},
        {"id": "", "type": "signal.validated", "source": "x", "data": {}},
    ],
)
async def test_a_value_that_is_not_an_envelope_is_dead_lettered_with_the_reason(
    engine: tuple[TradingEngineService, FakePublisher], value: dict[str, Any]
) -> None:
    service, pub = engine
    with pytest.raises(PermanentError, match=r"not an event envelope on paper.signals.validated"):
        await service._handle_validated_signal(value)
    with pytest.raises(PermanentError, match=r"not an event envelope on market.ticks"):
        await service._handle_market_tick(value)
    assert pub.sent == []


async def test_a_malformed_validated_signal_raises_a_validation_error(
    engine: tuple[TradingEngineService, FakePublisher],
) -> None:
    service, pub = engine
    message = envelope("signal.validated", {"original_signal": {"symbol": "X"}})
    with pytest.raises(ValidationError):
        await service._handle_validated_signal(message)
    with pytest.raises(ValidationError):
        await service._handle_validated_signal(envelope("signal.validated", {}))
    assert pub.sent == []


# ---------------------------------------------------------------------- read model


async def test_snapshot_values_each_strategy_across_traders(clock: Clock) -> None:
    service, _ = make_engine(clock, routes={"momentum": ["paper", "live"]})
    await service.trader_factory.initialize()
    await handle_tick(service, tick(100.0, clock()))
    await handle_signal(service, signal(quantity=10), "corr-a")
    await handle_signal(service, signal(SignalAction.SELL, strategy="mean_reversion"), "corr-b")
    await handle_tick(service, tick(110.0, clock()))

    snap = service.snapshot()
    buy_price = 100.0 * (1 + SLIPPAGE)
    sell_price = 100.0 * (1 - SLIPPAGE)
    per_trader = 10 * (110.0 - buy_price)
    assert snap.pnl_by_namespace["paper"]["momentum"] == pytest.approx(per_trader)
    assert snap.pnl_by_namespace["live"]["momentum"] == pytest.approx(per_trader)
    assert snap.pnl_by_strategy["momentum"] == pytest.approx(2 * per_trader)
    assert snap.pnl_by_strategy["mean_reversion"] == pytest.approx(10 * (sell_price - 110.0))
    assert snap.last_prices == {RELIANCE: 110.0}
    assert snap.stats["orders_filled"] == 3
    assert not any(math.isnan(v) for v in snap.pnl_by_strategy.values())


async def test_publisher_defaults_to_the_orchestrators_producer() -> None:
    settings = Settings()
    service = TradingEngineService(
        settings.redpanda,
        settings,
        None,
        PaperTraderFactory.from_settings(settings),
        ExecutionRouter.from_settings(settings),
        MarketHoursChecker.from_settings(settings),
    )
    assert service.publisher is service.orchestrator.producer
    assert [flow.consumer.group_id for flow in service.orchestrator.flows] == [
        "tradestream.trading_engine.signals",
        "tradestream.trading_engine.ticks",
    ]
    assert service.orchestrator.flows[0].consumer.topics == ["paper.signals.validated"]
    assert service.orchestrator.flows[1].consumer.topics == ["market.ticks"]
