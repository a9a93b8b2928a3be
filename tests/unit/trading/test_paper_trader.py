"""PaperTrader: pricing, resting limit orders, idempotency, books and P&L."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.schemas.events import OrderEvent, OrderStatus, OrderType, SignalAction
from services.trading_engine.orders import OrderRequest
from services.trading_engine.paper_trader import PaperTrader

NOW = datetime(2026, 1, 27, 6, 0, tzinfo=UTC)
TOKEN = 738561
OTHER = 2953217
_ids = count()


def order(
    action: SignalAction = SignalAction.BUY,
    quantity: int = 10,
    *,
    order_type: OrderType = OrderType.MARKET,
    limit: float | None = None,
    strategy: str = "momentum",
    token: int = TOKEN,
    oid: str | None = None,
) -> OrderRequest:
    n = next(_ids)
    return OrderRequest(
        client_order_id=oid or f"oid-{n}",
        signal_id=f"sig-{n}",
        strategy_id=strategy,
        instrument_token=token,
        symbol="RELIANCE" if token == TOKEN else "TCS",
        action=action,
        quantity=quantity,
        order_type=order_type,
        limit_price=limit,
    )


def limit_order(action: SignalAction, limit: float, quantity: int = 10) -> OrderRequest:
    return order(action, quantity, order_type=OrderType.LIMIT, limit=limit)


def trader(
    slippage_bps: float = 10.0,
    max_price_age_s: float = 60.0,
    max_remembered_orders: int = 100_000,
) -> PaperTrader:
    return PaperTrader(
        "paper",
        slippage_bps=slippage_bps,
        starting_cash=1_000_000.0,
        max_price_age_s=max_price_age_s,
        clock=lambda: NOW,
        max_remembered_orders=max_remembered_orders,
    )


# --- market orders -----------------------------------------------------------


async def test_market_buy_pays_up_and_sell_receives_less() -> None:
    t = trader(slippage_bps=10)
    buy = await t.place_order(order(SignalAction.BUY), 100.0, NOW)
    sell = await t.place_order(order(SignalAction.SELL), 100.0, NOW)
    assert buy.status is OrderStatus.FILLED
    assert buy.fill_price == pytest.approx(100.1)
    assert sell.status is OrderStatus.FILLED
    assert sell.fill_price == pytest.approx(99.9)
    assert buy.reason is None and not buy.duplicate
    assert buy.namespace == "paper"


async def test_zero_price_is_a_price_not_a_missing_one() -> None:
    t = trader()
    result = await t.place_order(order(SignalAction.BUY, 7), 0.0, NOW)
    assert result.status is OrderStatus.FILLED
    assert result.fill_price == 0.0
    assert t.position("momentum", TOKEN) == 7
    assert t.cash("momentum") == 1_000_000.0


async def test_zero_price_crosses_a_resting_buy_limit() -> None:
    t = trader()
    placed = await t.place_order(limit_order(SignalAction.BUY, 5.0), 6.0, NOW)
    assert placed.status is OrderStatus.PLACED
    [fill] = t.on_tick(TOKEN, 0.0)
    assert fill.fill_price == 0.0
    assert fill.status is OrderStatus.FILLED


async def test_missing_price_rejects_a_market_order() -> None:
    t = trader()
    result = await t.place_order(order(), None, None)
    assert result.status is OrderStatus.REJECTED
    assert result.reason == "no price for RELIANCE"
    assert result.fill_price is None
    assert t.position("momentum", TOKEN) == 0
    assert t.cash("momentum") == 1_000_000.0


async def test_stale_price_rejects_a_market_order_naming_the_age() -> None:
    t = trader(max_price_age_s=60)
    result = await t.place_order(order(), 100.0, NOW - timedelta(seconds=61))
    assert result.status is OrderStatus.REJECTED
    assert result.reason == "stale price for RELIANCE: 61.0s old, max 60s"
    assert t.position("momentum", TOKEN) == 0


async def test_price_exactly_at_max_age_is_still_fresh() -> None:
    t = trader(max_price_age_s=60)
    result = await t.place_order(order(), 100.0, NOW - timedelta(seconds=60))
    assert result.status is OrderStatus.FILLED


async def test_unknown_price_time_skips_the_age_check() -> None:
    result = await trader().place_order(order(), 100.0, None)
    assert result.status is OrderStatus.FILLED


async def test_naive_price_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        await trader().place_order(order(), 100.0, datetime(2026, 1, 27, 6, 0))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
async def test_invalid_price_is_rejected(bad: float) -> None:
    t = trader()
    for request in (order(), limit_order(SignalAction.BUY, 100.0)):
        result = await t.place_order(request, bad, NOW)
        assert result.status is OrderStatus.REJECTED
        assert result.reason is not None and "invalid price" in result.reason
    assert t.resting_orders() == []


# --- limit orders ------------------------------------------------------------


async def test_marketable_buy_limit_fills_at_slipped_price_capped_by_limit() -> None:
    t = trader(slippage_bps=10)
    cheap = await t.place_order(limit_order(SignalAction.BUY, 100.0), 99.0, NOW)
    assert cheap.status is OrderStatus.FILLED
    assert cheap.fill_price == pytest.approx(99.099)
    near = await t.place_order(limit_order(SignalAction.BUY, 100.0), 99.95, NOW)
    assert near.fill_price == 100.0
    at = await t.place_order(limit_order(SignalAction.BUY, 100.0), 100.0, NOW)
    assert at.fill_price == 100.0


async def test_marketable_sell_limit_fills_at_slipped_price_floored_by_limit() -> None:
    t = trader(slippage_bps=10)
    rich = await t.place_order(limit_order(SignalAction.SELL, 100.0), 101.0, NOW)
    assert rich.fill_price == pytest.approx(100.899)
    near = await t.place_order(limit_order(SignalAction.SELL, 100.0), 100.05, NOW)
    assert near.fill_price == 100.0


async def test_limit_rests_then_fills_on_a_crossing_tick() -> None:
    t = trader(slippage_bps=10)
    request = limit_order(SignalAction.SELL, 100.0, quantity=4)
    placed = await t.place_order(request, 99.0, NOW)
    assert placed.status is OrderStatus.PLACED
    assert placed.reason == "resting: last 99.0 below limit 100.0"
    assert t.position("momentum", TOKEN) == 0
    assert [r.client_order_id for r in t.resting_orders()] == [request.client_order_id]

    assert t.on_tick(TOKEN, 99.99) == []
    assert t.on_tick(OTHER, 500.0) == []
    [fill] = t.on_tick(TOKEN, 100.5)
    assert fill.status is OrderStatus.FILLED
    assert fill.client_order_id == request.client_order_id
    assert fill.fill_price == pytest.approx(100.3995)
    assert t.position("momentum", TOKEN) == -4
    assert t.cash("momentum") == pytest.approx(1_000_000.0 + 4 * 100.3995)
    assert t.resting_orders() == []
    assert t.on_tick(TOKEN, 120.0) == []
    assert t.order(request.client_order_id) is OrderStatus.FILLED


async def test_limit_with_missing_or_stale_price_rests_instead_of_rejecting() -> None:
    t = trader(max_price_age_s=60)
    no_price = await t.place_order(limit_order(SignalAction.BUY, 100.0), None, None)
    assert no_price.status is OrderStatus.PLACED
    assert no_price.reason == "resting: no price for RELIANCE"
    stale = await t.place_order(
        limit_order(SignalAction.BUY, 100.0), 90.0, NOW - timedelta(minutes=5)
    )
    assert stale.status is OrderStatus.PLACED
    assert stale.reason is not None and "300.0s old" in stale.reason
    assert len(t.on_tick(TOKEN, 95.0)) == 2
    assert t.position("momentum", TOKEN) == 20


async def test_on_tick_fills_only_crossing_orders_oldest_first() -> None:
    t = trader(slippage_bps=0)
    first = await t.place_order(limit_order(SignalAction.BUY, 100.0), 105.0, NOW)
    deep = await t.place_order(limit_order(SignalAction.BUY, 90.0), 105.0, NOW)
    second = await t.place_order(limit_order(SignalAction.BUY, 101.0), 105.0, NOW)
    sell = await t.place_order(limit_order(SignalAction.SELL, 110.0), 105.0, NOW)
    fills = t.on_tick(TOKEN, 99.0)
    assert [f.client_order_id for f in fills] == [first.client_order_id, second.client_order_id]
    assert [f.fill_price for f in fills] == [99.0, 99.0]
    resting = {r.client_order_id for r in t.resting_orders()}
    assert resting == {deep.client_order_id, sell.client_order_id}


def test_on_tick_refuses_invalid_prices() -> None:
    with pytest.raises(ValueError):
        trader().on_tick(TOKEN, math.nan)


# --- idempotency -------------------------------------------------------------


async def test_same_client_order_id_is_placed_once() -> None:
    t = trader(slippage_bps=0)
    request = order(SignalAction.BUY, 10)
    first = await t.place_order(request, 100.0, NOW)
    again = await t.place_order(request, 150.0, NOW)
    assert again.duplicate
    assert not first.duplicate
    assert again.status is OrderStatus.FILLED
    assert first.fill_price == 100.0 and again.fill_price is None  # no second fill
    assert t.position("momentum", TOKEN) == 10
    assert t.cash("momentum") == 1_000_000.0 - 1_000.0


async def test_duplicate_of_a_rejection_stays_rejected() -> None:
    t = trader()
    request = order()
    await t.place_order(request, None, None)
    again = await t.place_order(request, 100.0, NOW)
    assert again.duplicate
    assert again.status is OrderStatus.REJECTED
    assert t.position("momentum", TOKEN) == 0


async def test_duplicate_of_a_resting_order_neither_adds_an_order_nor_fills() -> None:
    t = trader()
    request = limit_order(SignalAction.BUY, 100.0)
    await t.place_order(request, 105.0, NOW)
    again = await t.place_order(request, 90.0, NOW)
    assert again.duplicate and again.status is OrderStatus.PLACED
    assert len(t.resting_orders()) == 1
    assert t.position("momentum", TOKEN) == 0
    t.on_tick(TOKEN, 99.0)
    after_fill = await t.place_order(request, 90.0, NOW)
    assert after_fill.duplicate and after_fill.status is OrderStatus.FILLED
    assert t.position("momentum", TOKEN) == 10


async def test_remembered_terminal_orders_are_bounded_but_resting_ones_kept() -> None:
    t = trader(max_remembered_orders=2)
    resting = limit_order(SignalAction.BUY, 1.0)
    await t.place_order(resting, 100.0, NOW)
    ids = [order() for _ in range(3)]
    for request in ids:
        await t.place_order(request, 100.0, NOW)
    assert t.order(ids[0].client_order_id) is None
    assert t.order(ids[2].client_order_id) is not None
    assert t.order(resting.client_order_id) is not None


# --- books and P&L -----------------------------------------------------------


async def test_round_trip_positions_cash_and_pnl() -> None:
    t = trader(slippage_bps=0)
    await t.place_order(order(SignalAction.BUY, 10), 100.0, NOW)
    assert t.position("momentum", TOKEN) == 10
    assert t.cash("momentum") == 999_000.0
    assert t.pnl("momentum", {TOKEN: 105.0}) == 50.0
    assert t.realized_pnl("momentum") == 0.0

    await t.place_order(order(SignalAction.SELL, 10), 110.0, NOW)
    assert t.position("momentum", TOKEN) == 0
    assert t.positions("momentum") == {}
    assert t.cash("momentum") == 1_000_100.0
    assert t.realized_pnl("momentum") == 100.0
    assert t.pnl("momentum", {}) == 100.0


async def test_round_trip_with_slippage_loses_the_spread() -> None:
    t = trader(slippage_bps=10)
    await t.place_order(order(SignalAction.BUY, 10), 100.0, NOW)
    await t.place_order(order(SignalAction.SELL, 10), 100.0, NOW)
    assert t.realized_pnl("momentum") == pytest.approx(-2.0)
    assert t.pnl("momentum", {}) == pytest.approx(-2.0)


async def test_short_reversal_and_average_cost() -> None:
    t = trader(slippage_bps=0)
    await t.place_order(order(SignalAction.BUY, 10), 100.0, NOW)
    await t.place_order(order(SignalAction.BUY, 10), 110.0, NOW)
    await t.place_order(order(SignalAction.SELL, 25), 120.0, NOW)
    assert t.position("momentum", TOKEN) == -5
    assert t.realized_pnl("momentum") == 300.0
    await t.place_order(order(SignalAction.BUY, 5), 100.0, NOW)
    assert t.realized_pnl("momentum") == 400.0
    assert t.pnl("momentum", {}) == 400.0


async def test_books_are_kept_per_strategy() -> None:
    t = trader(slippage_bps=0)
    await t.place_order(order(SignalAction.BUY, 10, strategy="a"), 100.0, NOW)
    await t.place_order(order(SignalAction.SELL, 3, strategy="b", token=OTHER), 50.0, NOW)
    assert t.position("a", TOKEN) == 10
    assert t.position("b", TOKEN) == 0
    assert t.positions("b") == {OTHER: -3}
    assert t.cash("a") == 999_000.0
    assert t.cash("b") == 1_000_150.0
    assert t.cash("never-traded") == 1_000_000.0
    assert t.pnl("never-traded", {}) == 0.0


async def test_pnl_needs_a_mark_for_every_open_position() -> None:
    t = trader()
    await t.place_order(order(), 100.0, NOW)
    with pytest.raises(KeyError, match=str(TOKEN)):
        t.pnl("momentum", {OTHER: 1.0})


async def test_result_converts_to_an_order_event() -> None:
    t = trader(slippage_bps=0)
    request = limit_order(SignalAction.BUY, 100.0)
    event = (await t.place_order(request, 99.0, NOW)).to_event()
    assert isinstance(event, OrderEvent)
    assert event.status is OrderStatus.FILLED
    assert event.namespace == "paper"
    assert event.client_order_id == request.client_order_id
    assert event.signal_id == request.signal_id
    assert event.limit_price == 100.0
    assert event.fill_price == 99.0


def test_constructor_validates_parameters() -> None:
    with pytest.raises(ValueError):
        PaperTrader("paper", slippage_bps=-1)
    with pytest.raises(ValueError):
        PaperTrader("paper", max_price_age_s=0)
    with pytest.raises(ValueError):
        PaperTrader("not a topic")


# --- properties --------------------------------------------------------------

trades = st.lists(
    st.tuples(
        st.sampled_from(SignalAction),
        st.integers(min_value=1, max_value=1_000),
        st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False),
    ),
    min_size=1,
    max_size=30,
)


@given(trades=trades, mark=st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False))
def test_zero_slippage_pnl_is_sum_of_trade_edges(
    trades: list[tuple[SignalAction, int, float]], mark: float
) -> None:
    """At zero slippage cash + position * price is conserved by each fill."""

    async def run() -> PaperTrader:
        t = trader(slippage_bps=0)
        for action, qty, price in trades:
            result = await t.place_order(order(action, qty), price, NOW)
            assert result.status is OrderStatus.FILLED
            assert result.fill_price == price
        return t

    t = asyncio.run(run())
    signed = [(q if a is SignalAction.BUY else -q, p) for a, q, p in trades]
    position = sum(q for q, _ in signed)
    expected = sum(q * (mark - p) for q, p in signed)
    assert t.position("momentum", TOKEN) == position
    scale = sum(abs(q) * (p + mark) for q, p in signed) + 1.0
    assert t.pnl("momentum", {TOKEN: mark}) == pytest.approx(expected, abs=1e-9 * scale)
    if position == 0:
        realized = t.realized_pnl("momentum")
        assert realized == pytest.approx(t.pnl("momentum", {}), abs=1e-9 * scale)


@given(
    action=st.sampled_from(SignalAction),
    last=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    limit=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    bps=st.floats(min_value=0.0, max_value=500.0, allow_nan=False),
)
def test_limit_fill_is_never_worse_than_limit_nor_better_than_last(
    action: SignalAction, last: float, limit: float, bps: float
) -> None:
    t = trader(slippage_bps=bps)
    result = asyncio.run(t.place_order(limit_order(action, limit), last, NOW))
    crosses = last <= limit if action is SignalAction.BUY else last >= limit
    assert (result.status is OrderStatus.FILLED) is crosses
    if crosses:
        assert result.fill_price is not None
        low, high = sorted((last, limit))
        assert low <= result.fill_price <= high
