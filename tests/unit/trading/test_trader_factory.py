"""PaperTraderFactory lifecycle and settings; client order ids and OrderRequest."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config.settings import Settings, TradingSettings
from core.schemas.events import OrderStatus, OrderType, SignalAction, TradingSignal
from core.streaming.topic_names import InvalidTopicNameError
from services.trading_engine.orders import OrderRequest, client_order_id
from services.trading_engine.trader_factory import (
    PaperTraderFactory,
    Trader,
    TraderFactory,
    TraderFactoryError,
)

NOW = datetime(2026, 1, 27, 6, 0, tzinfo=UTC)


def signal(**overrides: object) -> TradingSignal:
    fields: dict[str, object] = {
        "signal_id": "sig-1",
        "strategy_id": "momentum",
        "instrument_token": 738561,
        "symbol": "RELIANCE",
        "action": SignalAction.BUY,
        "quantity": 5,
    }
    return TradingSignal.model_validate(fields | overrides)


# --- factory lifecycle -------------------------------------------------------


async def test_get_trader_before_initialize_fails() -> None:
    factory = PaperTraderFactory()
    assert not factory.is_running
    with pytest.raises(TraderFactoryError, match="not initialized"):
        factory.get_trader("paper")


async def test_one_trader_per_namespace_created_lazily() -> None:
    factory = PaperTraderFactory()
    await factory.initialize()
    await factory.initialize()
    assert factory.is_running
    assert factory.traders() == {}
    paper = factory.get_trader("paper")
    assert factory.get_trader("paper") is paper
    live = factory.get_trader("live")
    assert live is not paper
    assert live.namespace == "live"
    assert factory.traders() == {"paper": paper, "live": live}
    factory.traders().clear()
    assert set(factory.traders()) == {"paper", "live"}


async def test_shutdown_is_final_and_keeps_traders_readable() -> None:
    factory = PaperTraderFactory()
    await factory.initialize()
    paper = factory.get_trader("paper")
    await factory.shutdown()
    await factory.shutdown()
    assert not factory.is_running
    with pytest.raises(TraderFactoryError, match="shut down"):
        factory.get_trader("paper")
    with pytest.raises(TraderFactoryError, match="shut down"):
        await factory.initialize()
    assert factory.traders() == {"paper": paper}


async def test_invalid_namespace_is_refused_and_not_cached() -> None:
    factory = PaperTraderFactory()
    await factory.initialize()
    with pytest.raises(InvalidTopicNameError):
        factory.get_trader("bad namespace")
    assert factory.traders() == {}


def test_invalid_parameters_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="slippage_bps"):
        PaperTraderFactory(slippage_bps=-0.5)
    with pytest.raises(ValueError, match="max_price_age_s"):
        PaperTraderFactory(max_price_age_s=0)


async def test_from_settings_configures_the_traders() -> None:
    settings = Settings(
        trading=TradingSettings(slippage_bps=20.0, starting_cash=5_000.0, max_price_age_s=10.0)
    )
    factory = PaperTraderFactory.from_settings(settings, clock=lambda: NOW)
    await factory.initialize()
    trader = factory.get_trader("paper")
    assert trader.cash("anyone") == 5_000.0
    request = OrderRequest.from_signal(signal(), "paper")
    filled = await trader.place_order(request, 100.0, NOW - timedelta(seconds=10))
    assert filled.fill_price == pytest.approx(100.2)
    late = OrderRequest.from_signal(signal(signal_id="sig-2"), "paper")
    stale = await trader.place_order(late, 100.0, NOW - timedelta(seconds=11))
    assert stale.status is OrderStatus.REJECTED


async def test_satisfies_the_protocols() -> None:
    factory: TraderFactory = PaperTraderFactory()
    await factory.initialize()
    trader: Trader = factory.get_trader("paper")
    assert trader.namespace == "paper"
    assert trader.on_tick(1, 1.0) == []


# --- client order ids ------------------------------------------------------------


def test_client_order_id_is_a_deterministic_uuid5() -> None:
    oid = client_order_id("sig-1", "paper")
    assert oid == client_order_id("sig-1", "paper")
    assert uuid.UUID(oid).version == 5
    assert oid != client_order_id("sig-1", "live")
    assert oid != client_order_id("sig-2", "paper")


def test_client_order_id_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError):
        client_order_id("", "paper")
    with pytest.raises(InvalidTopicNameError):
        client_order_id("sig", "a:b")


signal_ids = st.text(min_size=1, max_size=40)
namespaces = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True).filter(
    lambda n: n not in {".", ".."}
)


@given(s1=signal_ids, n1=namespaces, s2=signal_ids, n2=namespaces)
def test_client_order_id_is_equal_exactly_when_inputs_are(
    s1: str, n1: str, s2: str, n2: str
) -> None:
    assert client_order_id(s1, n1) == client_order_id(s1, n1)
    same = (s1, n1) == (s2, n2)
    assert (client_order_id(s1, n1) == client_order_id(s2, n2)) is same


async def test_redelivered_signal_places_one_order_per_namespace() -> None:
    factory = PaperTraderFactory(slippage_bps=0, clock=lambda: NOW)
    await factory.initialize()
    for _ in range(3):
        for ns in ("paper", "live"):
            request = OrderRequest.from_signal(signal(), ns)
            await factory.get_trader(ns).place_order(request, 100.0, NOW)
    for ns in ("paper", "live"):
        assert factory.get_trader(ns).position("momentum", 738561) == 5


# --- OrderRequest ------------------------------------------------------------------


def test_from_signal_carries_the_limit_price_only_for_limit_orders() -> None:
    market = OrderRequest.from_signal(signal(price=101.5), "paper")
    assert market.order_type is OrderType.MARKET
    assert market.limit_price is None
    assert market.client_order_id == client_order_id("sig-1", "paper")

    limit = OrderRequest.from_signal(signal(order_type=OrderType.LIMIT, price=99.5), "live")
    assert limit.order_type is OrderType.LIMIT
    assert limit.limit_price == 99.5
    assert limit.client_order_id == client_order_id("sig-1", "live")
    assert (limit.strategy_id, limit.instrument_token, limit.quantity) == ("momentum", 738561, 5)
    assert limit.signed_quantity == 5
    sell = OrderRequest.from_signal(signal(action=SignalAction.SELL), "paper")
    assert sell.signed_quantity == -5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantity": 0}, "quantity"),
        ({"order_type": OrderType.LIMIT}, "needs a limit_price"),
        ({"order_type": OrderType.LIMIT, "limit_price": -1.0}, "limit_price"),
        ({"order_type": OrderType.LIMIT, "limit_price": float("nan")}, "limit_price"),
        ({"client_order_id": ""}, "client_order_id"),
        ({"strategy_id": ""}, "strategy_id"),
    ],
)
def test_order_request_validation(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "client_order_id": "oid",
        "signal_id": "sig",
        "strategy_id": "s",
        "instrument_token": 1,
        "symbol": "X",
        "action": SignalAction.BUY,
        "quantity": 1,
    }
    with pytest.raises(ValueError, match=message):
        OrderRequest(**(fields | changes))  # type: ignore[arg-type]
