"""Books rebuilt from the ledger: the same state whatever the order events are read in."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.schemas.events import EventType, OrderStatus, OrderType, SignalAction
from services.trading_engine.book import Book
from services.trading_engine.ledger import LedgerFold
from services.trading_engine.orders import OrderRequest
from services.trading_engine.paper_trader import PaperTrader

NOW = datetime(2026, 1, 27, 6, 0, tzinfo=UTC)
TOKEN = 738561


def test_book_average_cost_realizes_on_close_and_flips_at_the_fill_price() -> None:
    book = Book(cash=1_000.0)
    book.apply_fill(TOKEN, 10, 100.0)
    book.apply_fill(TOKEN, 10, 110.0)
    assert book.positions[TOKEN].avg_price == pytest.approx(105.0)
    book.apply_fill(TOKEN, -15, 120.0)  # closes 15 at +15 each
    assert book.realized == pytest.approx(225.0)
    assert book.positions[TOKEN].quantity == 5
    book.apply_fill(TOKEN, -10, 90.0)  # closes 5 at -15 each, opens a short of 5 at 90
    assert book.realized == pytest.approx(150.0)
    assert (book.positions[TOKEN].quantity, book.positions[TOKEN].avg_price) == (-5, 90.0)
    assert book.cash == pytest.approx(1_000.0 - 1000 - 1100 + 1800 + 900)
    assert book.marked_pnl(1_000.0, {TOKEN: 80.0}) == pytest.approx(book.cash - 1_000 - 5 * 80.0)
    with pytest.raises(KeyError):
        book.marked_pnl(1_000.0, {})
    again = Book.from_dict(book.to_dict())
    assert again.to_dict() == book.to_dict()


def _envelope(kind: EventType, result: Any, placement: bool = False) -> dict[str, Any]:
    return {
        "id": f"e-{kind.value}-{result.client_order_id}",
        "type": kind.value,
        "source": "trading_engine",
        "timestamp": NOW.isoformat(),
        "correlation_id": f"corr-{result.request.signal_id}",
        "data": result.to_event(placement=placement).model_dump(mode="json"),
    }


async def _trade(seed: int) -> tuple[PaperTrader, list[dict[str, Any]]]:
    """A trader driven by random orders and ticks, and the events it would publish."""
    rng = random.Random(seed)
    trader = PaperTrader("paper", slippage_bps=5.0, starting_cash=1e6, clock=lambda: NOW)
    events: list[dict[str, Any]] = []
    price = 100.0
    for n in range(60):
        price = max(1.0, price + rng.choice((-1.0, 0.5, 1.0, -0.5)))
        if rng.random() < 0.3:
            for fill in trader.on_tick(TOKEN, price):
                events.append(_envelope(EventType.ORDER_FILLED, fill))
            continue
        limit = rng.random() < 0.5
        request = OrderRequest(
            client_order_id=f"oid-{n}",
            signal_id=f"sig-{n}",
            strategy_id=rng.choice(("momentum", "mean_reversion")),
            instrument_token=TOKEN,
            symbol="RELIANCE",
            action=rng.choice((SignalAction.BUY, SignalAction.SELL)),
            quantity=rng.randint(1, 20),
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            limit_price=round(price + rng.uniform(-2, 2), 2) if limit else None,
        )
        result = await trader.place_order(request, price if rng.random() > 0.05 else None, NOW)
        if result.status is OrderStatus.REJECTED:
            events.append(_envelope(EventType.ORDER_REJECTED, result))
            continue
        events.append(_envelope(EventType.ORDER_PLACED, result, placement=True))
        if result.status is OrderStatus.FILLED:
            events.append(_envelope(EventType.ORDER_FILLED, result))
    return trader, events


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shuffle_seed=st.integers(0, 10_000))
async def test_the_fold_gives_the_traders_books_whatever_the_read_order(
    seed: int, shuffle_seed: int
) -> None:
    trader, events = await _trade(seed)
    shuffled = list(events)
    random.Random(shuffle_seed).shuffle(shuffled)  # two topics, three partitions: any order
    fold = LedgerFold("paper", 1e6)
    for envelope in shuffled + shuffled[:5]:  # and some events read twice
        fold.add(envelope)
    state = fold.result()
    assert {s: b.to_dict() for s, b in state.books.items()} == {
        s: b.to_dict() for s, b in trader.books().items()
    }
    assert [r.request.client_order_id for r in state.resting] == [
        r.client_order_id for r in trader.resting_orders()
    ]
    assert state.sequence == trader.sequence
    assert state.duplicates <= 5  # a re-read event of a finished order is not even kept


def test_the_fold_counts_what_is_not_an_order_event_of_its_namespace() -> None:
    fold = LedgerFold("paper", 1e6)
    fold.add({"type": "order.filled", "data": "nope"})
    fold.add({"type": "signal.raw", "data": {}})
    fold.add({"type": "order.filled", "data": {"client_order_id": "x"}})
    assert fold.result().ignored == 3
    assert fold.result().books == {}


async def test_a_restored_trader_continues_the_sequence_and_refuses_repeats() -> None:
    trader, events = await _trade(7)
    fold = LedgerFold("paper", 1e6, remember=5)
    for envelope in events:
        fold.add(envelope)
    state = fold.result()
    assert len(state.finished) == 5  # bounded: only the most recent finished ids
    restored = PaperTrader("paper", starting_cash=1e6, clock=lambda: NOW)
    restored.restore(state)
    assert restored.sequence == trader.sequence
    oid, status = state.finished[-1]
    request = OrderRequest(oid, "s", "momentum", TOKEN, "RELIANCE", SignalAction.BUY, 1)
    again = await restored.place_order(request, 100.0, NOW)
    assert again.duplicate and again.status is status
    with pytest.raises(RuntimeError, match="already traded"):
        restored.restore(state)


async def test_resting_orders_expire_with_a_cancellation_in_placement_order() -> None:
    now = [NOW]
    trader = PaperTrader("paper", clock=lambda: now[0], resting_order_ttl_s=60.0)
    first = OrderRequest("o-1", "s-1", "m", TOKEN, "R", SignalAction.BUY, 1, OrderType.LIMIT, 90.0)
    await trader.place_order(first, 100.0, NOW)
    now[0] = NOW + timedelta(seconds=30)
    second = OrderRequest("o-2", "s-2", "m", TOKEN, "R", SignalAction.BUY, 1, OrderType.LIMIT, 90.0)
    await trader.place_order(second, 100.0, now[0])
    assert trader.expire(NOW + timedelta(seconds=60)) == []
    [cancelled] = trader.expire(NOW + timedelta(seconds=61))
    assert cancelled.client_order_id == "o-1"
    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.reason == "expired: resting for more than 60 s"
    assert cancelled.sequence == 3
    assert [r.client_order_id for r in trader.resting_orders()] == ["o-2"]
    assert trader.on_tick(TOKEN, 80.0)[0].client_order_id == "o-2"


async def test_beyond_the_resting_cap_a_limit_order_is_rejected() -> None:
    trader = PaperTrader("paper", clock=lambda: NOW, max_resting_orders=2)
    for n in range(3):
        request = OrderRequest(
            f"o-{n}", f"s-{n}", "m", TOKEN, "R", SignalAction.BUY, 1, OrderType.LIMIT, 90.0
        )
        result = await trader.place_order(request, 100.0, NOW)
    assert result.status is OrderStatus.REJECTED
    assert result.reason == "too many resting orders (2)"
    assert len(trader.resting_orders()) == 2
