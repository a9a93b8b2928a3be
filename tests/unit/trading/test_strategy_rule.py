"""Strategy rules and the market-data random walk: pure, deterministic logic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.schemas.events import MarketTick, OrderType, SignalAction
from services.market_data.service import TICK_SIZE, RandomWalk, round_to_tick
from services.strategy_runner.service import (
    MeanReversionStrategy,
    MomentumStrategy,
    RunCounter,
    SignalIntent,
    build_signal,
    signal_id_for,
)

TOKEN = 738561
AT = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)


def feed(strategy: MomentumStrategy | MeanReversionStrategy, prices: list[float]) -> list:
    return [strategy.on_price(TOKEN, p) for p in prices]


def test_run_counter_counts_consecutive_moves_and_resets_on_flat() -> None:
    runs = RunCounter()
    assert [runs.update(TOKEN, p) for p in (10, 11, 12, 11, 10, 9, 9, 10)] == [
        0,
        1,
        2,
        -1,
        -2,
        -3,
        0,
        1,
    ]


def test_run_counter_is_per_instrument() -> None:
    runs = RunCounter()
    runs.update(1, 10)
    runs.update(2, 50)
    assert runs.update(1, 11) == 1
    assert runs.update(2, 49) == -1


def test_momentum_buys_after_k_rises_and_sells_after_k_falls() -> None:
    strategy = MomentumStrategy(run_length=3, quantity=7)
    out = feed(strategy, [100, 101, 102, 103])
    assert out[:3] == [None, None, None]
    assert out[3] == SignalIntent(SignalAction.BUY, 7)
    out = feed(strategy, [102, 101, 100])
    assert out == [None, None, SignalIntent(SignalAction.SELL, 7)]


def test_momentum_restarts_its_count_after_a_signal() -> None:
    strategy = MomentumStrategy(run_length=2)
    out = feed(strategy, [1, 2, 3, 4, 5])
    assert [o is not None for o in out] == [False, False, True, False, True]


def test_a_flat_tick_breaks_a_run() -> None:
    strategy = MomentumStrategy(run_length=3)
    assert feed(strategy, [1, 2, 3, 3, 4]) == [None] * 5


def test_mean_reversion_fades_the_run_with_limit_orders() -> None:
    strategy = MeanReversionStrategy(run_length=2, quantity=5, limit_offset_ticks=2)
    *_, sell = feed(strategy, [100.0, 100.05, 100.1])
    assert sell == SignalIntent(SignalAction.SELL, 5, OrderType.LIMIT, 100.2)
    *_, buy = feed(strategy, [100.05, 100.0])
    assert buy == SignalIntent(SignalAction.BUY, 5, OrderType.LIMIT, 99.9)


def test_mean_reversion_never_sets_a_non_positive_limit() -> None:
    strategy = MeanReversionStrategy(run_length=1, limit_offset_ticks=5)
    *_, buy = feed(strategy, [0.2, 0.1])
    assert buy is not None and buy.price == 0.1
    assert feed(strategy, [0.0]) == [None]


def test_strategies_refuse_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        MomentumStrategy(run_length=0)
    with pytest.raises(ValueError):
        MeanReversionStrategy(limit_offset_ticks=-1)


def test_signal_ids_are_derived_from_strategy_and_tick() -> None:
    tick = MarketTick(instrument_token=TOKEN, symbol="RELIANCE", last_price=100.0, timestamp=AT)
    intent = SignalIntent(SignalAction.BUY, 3, OrderType.LIMIT, 99.95)
    a = build_signal("momentum", tick, intent, "evt-1", emitted_at=AT)
    b = build_signal("momentum", tick, intent, "evt-1")
    assert a.signal_id == b.signal_id == signal_id_for("momentum", "evt-1")
    assert signal_id_for("mean_reversion", "evt-1") != a.signal_id
    assert (a.order_type, a.price, a.quantity, a.timestamp) == (OrderType.LIMIT, 99.95, 3, AT)
    assert build_signal("momentum", tick, intent, None).signal_id != a.signal_id
    assert b.timestamp > AT  # emitted now, not at the tick's time


# ---------------------------------------------------------------------- random walk


@given(st.floats(min_value=-1e6, max_value=1e7, allow_nan=False))
def test_round_to_tick_is_on_the_grid_and_positive(price: float) -> None:
    rounded = round_to_tick(price)
    assert rounded >= TICK_SIZE
    assert abs(rounded / TICK_SIZE - round(rounded / TICK_SIZE)) < 1e-6


def test_walk_is_deterministic_for_a_seed_and_visits_instruments_in_turn() -> None:
    instruments = {"RELIANCE": 738561, "TCS": 2953217, "NEWCO": 1}
    a = RandomWalk(instruments, seed=7)
    b = RandomWalk(instruments, seed=7)
    ticks_a = [a.next_tick(AT) for _ in range(30)]
    ticks_b = [b.next_tick(AT) for _ in range(30)]
    assert ticks_a == ticks_b
    assert [t.symbol for t in ticks_a[:4]] == ["RELIANCE", "TCS", "NEWCO", "RELIANCE"]
    assert 2_500 < ticks_a[0].last_price < 3_300
    assert 800 < ticks_a[2].last_price < 1_200


@given(st.integers(min_value=0, max_value=2**32), st.floats(min_value=0.05, max_value=5.0))
def test_walk_never_goes_negative(seed: int, start: float) -> None:
    walk = RandomWalk({"X": 1}, seed=seed, volatility_bps=5_000, start_prices={"X": start})
    for _ in range(200):
        tick = walk.next_tick(AT)
        assert tick.last_price >= TICK_SIZE
        assert abs(tick.last_price / TICK_SIZE - round(tick.last_price / TICK_SIZE)) < 1e-6


def test_default_strategies_give_a_few_signals_per_second_at_the_default_rate() -> None:
    walk = RandomWalk(
        {"RELIANCE": 738561, "TCS": 2953217, "INFY": 408065, "HDFCBANK": 341249, "ICICIBANK": 1},
        seed=1,
    )
    strategies = [MomentumStrategy(), MeanReversionStrategy()]
    signals = 0
    ticks = 20 * 60
    for _ in range(ticks):
        tick = walk.next_tick(AT)
        for strategy in strategies:
            if strategy.on_price(tick.instrument_token, tick.last_price) is not None:
                signals += 1
    per_second = signals / 60
    assert 1.0 <= per_second <= 10.0
