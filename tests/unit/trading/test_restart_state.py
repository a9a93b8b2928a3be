"""What the trading services rebuild from their topics when they start again.

Each test runs a service on the embedded broker, stops it, starts a new one on
the same broker and dedup store, and checks that the new one continues where the
first stopped: books, resting orders, order ids, decisions, seen signal ids and
strategy state.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from core.config.settings import ReliabilitySettings, Settings, TradingSettings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    ValidatedSignal,
    generate_uuid7,
    utc_now,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.testing import StreamTestHarness
from services.registry import build_service
from services.signal_validator.service import DUPLICATE_SIGNAL_ID, SignalValidatorService
from services.strategy_runner.service import StrategyRunnerService
from services.trading_engine.orders import client_order_id
from services.trading_engine.service import TradingEngineService
from tests.unit.trading.test_trading_engine_handlers import CLOSED_AT, OPEN_AT, Clock

RELIANCE = 738561
PAPER = TopicMap("paper")


def trade(
    action: SignalAction = SignalAction.BUY,
    quantity: int = 10,
    limit: float | None = None,
    strategy: str = "momentum",
) -> TradingSignal:
    return TradingSignal(
        strategy_id=strategy,
        instrument_token=RELIANCE,
        symbol="RELIANCE",
        action=action,
        quantity=quantity,
        order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET,
        price=limit,
    )


async def send_tick(harness: StreamTestHarness, price: float, at: datetime) -> None:
    tick = MarketTick(instrument_token=RELIANCE, symbol="RELIANCE", last_price=price, timestamp=at)
    await harness.publish(
        TopicNames.MARKET_TICKS, tick, key=str(RELIANCE), event_type=EventType.MARKET_TICK
    )


async def send_validated(harness: StreamTestHarness, signal: TradingSignal, corr: str) -> None:
    await harness.publish(
        PAPER.signals_validated(),
        ValidatedSignal(original_signal=signal),
        key=signal.strategy_id,
        event_type=EventType.VALIDATED_SIGNAL,
        correlation_id=corr,
    )


def engine(harness: StreamTestHarness, clock: Clock) -> TradingEngineService:
    service = build_service("trading_engine", harness.settings, clock=clock)
    assert isinstance(service, TradingEngineService)
    return service


def books(service: TradingEngineService) -> dict[str, Any]:
    return {
        ns: {sid: book.to_dict() for sid, book in trader.books().items()}
        for ns, trader in service.traders().items()
    }


async def test_the_engine_rebuilds_books_resting_orders_and_order_ids() -> None:
    clock = Clock(OPEN_AT)
    base = Settings(trading=TradingSettings(strategy_routes={"momentum": ["paper", "shadow"]}))
    async with StreamTestHarness(base) as harness:
        first = engine(harness, clock)
        buy, sell = trade(quantity=10), trade(SignalAction.SELL, quantity=4)
        resting = trade(limit=2_700.0, strategy="mean_reversion")
        async with harness.running(first):
            await send_tick(harness, 2_900.0, clock())
            for n, signal in enumerate((buy, resting, sell)):
                await send_validated(harness, signal, f"corr-{n}")
            await harness.wait_idle()
            before = books(first)
            sequences = {ns: t.sequence for ns, t in first.traders().items()}  # type: ignore[attr-defined]
        [[qty, avg, realized]] = before["shadow"]["momentum"]["positions"].values()
        assert (qty, avg, realized) == (6, 2901.45, pytest.approx(4 * (2898.55 - 2901.45)))

        second = engine(harness, clock)
        async with harness.running(second):
            assert books(second) == before
            assert {ns: t.sequence for ns, t in second.traders().items()} == sequences  # type: ignore[attr-defined]
            [restored] = second.traders()["paper"].resting_orders()
            oid = client_order_id(resting.signal_id, "paper")
            assert restored.client_order_id == oid
            assert second.quote(RELIANCE) is not None  # the last price came back too

            await send_validated(harness, buy, "corr-again")  # a redelivery after the restart
            await send_tick(harness, 2_690.0, clock() + timedelta(seconds=1))
            await harness.wait_idle()

        placed = [e["data"]["client_order_id"] for e in harness.produced(PAPER.orders())]
        assert len(placed) == len(set(placed)) == 3
        fills = [e for e in harness.produced(PAPER.executions()) if e["data"]["status"] == "FILLED"]
        [late] = [f for f in fills if f["data"]["client_order_id"] == oid]
        assert late["correlation_id"] == "corr-1"  # still in the chain of its signal
        assert late["data"]["sequence"] == sequences["paper"] + 1
        assert second.stats.duplicate_orders == 2  # paper and shadow both knew the order


async def test_restored_orders_past_their_lifetime_are_cancelled_with_an_event() -> None:
    clock = Clock(OPEN_AT)
    base = Settings(trading=TradingSettings(resting_order_ttl_s=60.0))
    async with StreamTestHarness(base) as harness:
        async with harness.running(engine(harness, clock)):
            await send_tick(harness, 2_900.0, clock())
            await send_validated(harness, trade(limit=2_700.0, strategy="mean_reversion"), "c-1")
            await harness.wait_idle()
        clock.advance(seconds=120)  # the engine was down for two minutes
        second = engine(harness, clock)
        async with harness.running(second):
            assert second.traders()["paper"].resting_orders() == []
        [cancel] = [
            e for e in harness.produced(PAPER.executions()) if e["type"] == "order.cancelled"
        ]
        assert cancel["data"]["reason"] == "expired: resting for more than 60 s"
        assert cancel["correlation_id"] == "c-1"


async def test_a_signal_rejected_before_the_restart_stays_rejected_after_it() -> None:
    clock = Clock(CLOSED_AT)
    async with StreamTestHarness(Settings()) as harness:
        signal = trade()
        async with harness.running(engine(harness, clock)):
            await send_validated(harness, signal, "c-closed")
            await harness.wait_idle()
        clock.now = OPEN_AT
        async with harness.running(engine(harness, clock)):
            await send_tick(harness, 2_900.0, clock())
            await send_validated(harness, signal, "c-again")
            await harness.wait_idle()
        assert harness.produced(PAPER.orders()) == []
        assert len(harness.produced(PAPER.signals_rejected())) == 1


async def test_the_validator_gives_a_raw_signal_redelivered_after_a_restart_no_second_verdict() -> (
    None
):
    base = Settings(reliability=ReliabilitySettings(dedup_enabled=False))
    async with StreamTestHarness(base) as harness:
        raw = PAPER.signals_raw()
        signal = trade(quantity=5, limit=2_900.0).model_dump(mode="json")
        event = {
            "id": generate_uuid7(),
            "type": EventType.RAW_SIGNAL.value,
            "source": "test",
            "timestamp": OPEN_AT.isoformat(),
            "data": signal,
        }
        body = orjson.dumps(event)
        async with harness.running(SignalValidatorService(harness.config, harness.settings)):
            await harness.publish_raw(raw, body, key=b"momentum")
            await harness.wait_idle()
        second = SignalValidatorService(harness.config, harness.settings)
        async with harness.running(second):
            assert signal["signal_id"] in second.seen_ids
            await harness.publish_raw(raw, body, key=b"momentum")  # the same event again
            await harness.publish(raw, signal, key="momentum", event_type=EventType.RAW_SIGNAL)
            await harness.wait_idle()
        assert len(harness.produced(PAPER.signals_validated())) == 1
        [duplicate] = harness.produced(PAPER.signals_rejected())
        assert duplicate["data"]["reason"] == DUPLICATE_SIGNAL_ID
        assert second.stats.redeliveries == 1


def _ticks(count: int) -> list[bytes]:
    """Tick envelopes with fixed ids: a run up, a run down, and so on."""
    prices = [100.0]
    for n in range(1, count):
        step = 0.05 if (n // 5) % 2 == 0 else -0.05
        prices.append(round(prices[-1] + step, 2))
    start = utc_now() - timedelta(seconds=count)
    out = []
    for n, price in enumerate(prices):
        tick = MarketTick(
            instrument_token=RELIANCE,
            symbol="RELIANCE",
            last_price=price,
            timestamp=start + timedelta(seconds=n),
        )
        envelope = {
            "id": f"tick-{n:04d}",
            "type": EventType.MARKET_TICK.value,
            "source": "test",
            "timestamp": tick.timestamp.isoformat(),
            "data": tick.model_dump(mode="json"),
        }
        out.append(orjson.dumps(envelope))
    return out


def _signals(harness: StreamTestHarness) -> list[tuple[str, str, str, float | None]]:
    return sorted(
        (e["data"]["signal_id"], e["data"]["strategy_id"], e["data"]["action"], e["data"]["price"])
        for e in harness.produced(PAPER.signals_raw())
    )


async def test_a_restarted_strategy_runner_emits_what_an_uninterrupted_one_would() -> None:
    ticks = _ticks(80)
    async with StreamTestHarness(Settings()) as reference:
        async with reference.running(StrategyRunnerService(reference.config, reference.settings)):
            for body in ticks:
                await reference.publish_raw(TopicNames.MARKET_TICKS, body, key=b"738561")
            await reference.wait_idle()
        expected = _signals(reference)
    assert len(expected) > 10

    async with StreamTestHarness(Settings()) as harness:
        first = StrategyRunnerService(harness.config, harness.settings)
        async with harness.running(first):
            for body in ticks[:37]:
                await harness.publish_raw(TopicNames.MARKET_TICKS, body, key=b"738561")
            await harness.wait_idle()
        for body in ticks[37:]:  # the feed goes on while the runner is down
            await harness.publish_raw(TopicNames.MARKET_TICKS, body, key=b"738561")
        # A runner in another group sees every tick again, as after a crash before any commit.
        settings = harness.settings.model_copy(
            update={
                "redpanda": harness.settings.redpanda.model_copy(
                    update={"group_id_prefix": "restarted"}
                )
            }
        )
        second = StrategyRunnerService(settings.redpanda, settings)
        async with harness.running(second):
            await harness.wait_idle()
        assert second.warmup.replayed == 80
        assert _signals(harness) == expected  # each once: none lost, none repeated
        assert second.ticks_handled == 0  # every tick was part of the warm-up


async def test_warm_up_owes_no_signal_for_a_tick_older_than_the_price_age() -> None:
    ticks = _ticks(40)
    async with StreamTestHarness(Settings()) as harness:
        for body in ticks:
            await harness.publish_raw(TopicNames.MARKET_TICKS, body, key=b"738561")
        settings = harness.settings.model_copy(
            update={"trading": TradingSettings(max_price_age_s=5.0)}
        )
        runner = StrategyRunnerService(settings.redpanda, settings)
        async with harness.running(runner):
            await harness.wait_idle()
        assert runner.warmup.replayed == 40
        assert runner.warmup.stale_signals > 0
        sent = harness.produced(PAPER.signals_raw())
        # only ticks of the last 5 s may still give signals
        assert len(sent) < runner.warmup.stale_signals
        assert runner.ticks_handled == 0


async def test_a_restart_from_a_snapshot_gives_the_same_books_and_knows_old_order_ids() -> None:
    clock = Clock(OPEN_AT)
    base = Settings(trading=TradingSettings(snapshot_every=4))
    async with StreamTestHarness(base) as harness:
        first = engine(harness, clock)
        signals = [trade(SignalAction.BUY if n % 3 else SignalAction.SELL, 5 + n) for n in range(6)]
        resting = trade(limit=2_800.0, strategy="mean_reversion")
        async with harness.running(first):
            await send_tick(harness, 2_900.0, clock())
            for n, signal in enumerate([*signals[:3], resting, *signals[3:]]):
                await send_validated(harness, signal, f"c-{n}")
            await harness.wait_idle()
            before = books(first)
        assert first.snapshots_written >= 2
        snapshots = harness.produced("paper.ledger.snapshots")
        assert snapshots and snapshots[-1]["type"] == "ledger.snapshot"

        second = engine(harness, clock)
        with capture_logs() as logs:
            async with harness.running(second):
                assert books(second) == before
                [kept] = second.traders()["paper"].resting_orders()
                assert kept.client_order_id == client_order_id(resting.signal_id, "paper")
                await send_validated(harness, signals[0], "again")  # placed before the snapshot
                await harness.wait_idle()
        [restored] = [e for e in logs if e["event"] == "book restored"]
        assert restored["snapshot"]  # started from a snapshot, not from offset 0
        assert restored["order_events_read"] < 2 * len(signals)  # only what came after it
        assert second.stats.duplicate_orders == 1
        placed = [e["data"]["client_order_id"] for e in harness.produced(PAPER.orders())]
        assert len(placed) == len(set(placed)) == 7


async def test_a_snapshot_beyond_the_ledgers_end_is_ignored() -> None:
    clock = Clock(OPEN_AT)
    async with StreamTestHarness(Settings()) as harness:
        first = engine(harness, clock)
        async with harness.running(first):
            await send_tick(harness, 2_900.0, clock())
            await send_validated(harness, trade(quantity=7), "c-1")
            await harness.wait_idle()
            before = books(first)
        bogus = {
            "version": 1,
            "namespace": "paper",
            "taken_at": "2026-01-01T00:00:00+00:00",
            "sequence": 99,
            "ends": [["paper.executions", p, 1_000] for p in range(3)]
            + [["paper.orders", p, 1_000] for p in range(3)],
            "books": {"momentum": {"cash": 1.0, "realized": 0.0, "fills": 1, "positions": {}}},
            "resting": [],
        }
        await harness.publish(
            "paper.ledger.snapshots", bogus, key="paper", event_type="ledger.snapshot"
        )
        second = engine(harness, clock)
        async with harness.running(second):
            assert books(second) == before
