"""A trader's view from the command line: positions, an order's trail, topic tail, version.

The pipeline runs on an embedded broker in this process; the commands run in a
thread of the same process with that broker's ``memory://`` URL, so they read the
same topics a separate process would read on Kafka.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import orjson
from typer.testing import CliRunner, Result

from core.config.settings import Settings, TradingSettings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    utc_now,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.testing import StreamTestHarness
from services.cli.main import app, package_version
from services.registry import build_service
from services.trading_engine.orders import client_order_id
from services.trading_engine.service import TradingEngineService

runner = CliRunner()
RELIANCE = 738561
PAPER = TopicMap("paper")


async def invoke(harness: StreamTestHarness, *args: str) -> Result:
    env = {"TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS": harness.broker_url, "COLUMNS": "200"}
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def run_pipeline(harness: StreamTestHarness) -> tuple[TradingEngineService, list[str]]:
    """Engine and validator; two raw signals that fill and one LIMIT that rests."""
    engine = build_service("trading_engine", harness.settings)
    validator = build_service("signal_validator", harness.settings)
    assert isinstance(engine, TradingEngineService)
    signals = [
        TradingSignal(
            strategy_id=strategy,
            instrument_token=RELIANCE,
            symbol="RELIANCE",
            action=action,
            quantity=qty,
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            price=limit,
        )
        for strategy, action, qty, limit in (
            ("momentum", SignalAction.BUY, 10, None),
            ("momentum", SignalAction.SELL, 4, None),
            ("mean_reversion", SignalAction.BUY, 5, 2_750.0),
        )
    ]
    async with harness.running(engine), harness.running(validator):
        tick = MarketTick(instrument_token=RELIANCE, symbol="RELIANCE", last_price=2_900.0)
        await harness.publish(
            TopicNames.MARKET_TICKS, tick, key=str(RELIANCE), event_type=EventType.MARKET_TICK
        )
        await harness.wait_idle()
        for n, signal in enumerate(signals):
            await harness.publish(
                PAPER.signals_raw(),
                signal,
                key=signal.strategy_id,
                event_type=EventType.RAW_SIGNAL,
                correlation_id=f"tick-{n}",
            )
        await harness.wait_idle()
        later = MarketTick(
            instrument_token=RELIANCE,
            symbol="RELIANCE",
            last_price=2_910.0,
            timestamp=utc_now() + timedelta(milliseconds=5),
        )
        await harness.publish(
            TopicNames.MARKET_TICKS, later, key=str(RELIANCE), event_type=EventType.MARKET_TICK
        )
        await harness.wait_idle()
    return engine, [client_order_id(s.signal_id, "paper") for s in signals]


async def test_positions_orders_show_and_topic_tail_read_the_ledger() -> None:
    base = Settings(trading=TradingSettings(market_always_open=True))
    async with StreamTestHarness(base) as harness:
        engine, oids = await run_pipeline(harness)
        [book] = [v for v in engine.book_views() if v.strategy_id == "momentum"]

        shown = await invoke(harness, "positions", "--json")
        assert shown.exit_code == 0, shown.output
        rows = {r["strategy"]: r for r in map(orjson.loads, shown.output.splitlines())}
        momentum = rows["momentum"]
        assert momentum["cash"] == book.book.cash
        assert momentum["realized_pnl"] == book.book.realized
        [pos] = momentum["positions"]
        assert (pos["instrument"], pos["quantity"], pos["last_price"]) == ("RELIANCE", 6, 2_910.0)
        assert momentum["marked_pnl"] == engine.snapshot().pnl_by_namespace["paper"]["momentum"]
        assert rows["mean_reversion"]["resting_orders"] == 1
        assert rows["mean_reversion"]["positions"] == []

        table = await invoke(harness, "positions")
        assert table.exit_code == 0
        assert "momentum" in table.output and "RELIANCE" in table.output

        trail = await invoke(harness, "orders", "show", oids[0], "--json")
        assert trail.exit_code == 0, trail.output
        events = [orjson.loads(line) for line in trail.output.splitlines()]
        assert [e["type"] for e in events] == [
            "signal.raw",
            "signal.validated",
            "order.placed",
            "order.filled",
        ]
        raw, validated, placed, filled = events
        assert validated["causation_id"] == raw["id"]
        assert placed["causation_id"] == validated["id"]
        assert filled["data"]["client_order_id"] == placed["data"]["client_order_id"] == oids[0]
        assert {e["correlation_id"] for e in events} == {"tick-0"}
        readable = await invoke(harness, "orders", "show", oids[2])
        assert readable.exit_code == 0
        assert "order.placed" in readable.output and "limit 2750.0" in readable.output
        bad = await invoke(harness, "positions", "-n", "not a namespace")
        assert bad.exit_code == 2 and "namespace 'not a namespace'" in bad.output
        missing = await invoke(harness, "orders", "show", "no-such-order")
        assert missing.exit_code == 1 and "no order no-such-order" in missing.output

        tail = await invoke(harness, "topic", "tail", PAPER.executions(), "-n", "5")
        assert tail.exit_code == 0
        assert tail.output.count("order.filled") == 2
        await harness.publish_raw(PAPER.executions(), b"\x00garbage", key=b"x")
        await harness.publish_raw(PAPER.executions(), b'{"id": "cust-42"}', key=b"y")
        tail = await invoke(harness, "topic", "tail", PAPER.executions(), "--json")
        views = [orjson.loads(line) for line in tail.output.splitlines()]
        problems = {v["key"]: v.get("problem") for v in views}
        assert problems["x"] == "not JSON"
        assert problems["y"].startswith("not an envelope: missing or empty")
        gone = await invoke(harness, "topic", "tail", "no.such.topic")
        assert gone.exit_code == 1 and "topic no.such.topic does not exist" in gone.output


async def test_dead_letter_list_json_and_wide_never_cut_a_value() -> None:
    async with StreamTestHarness(Settings()) as harness:
        long_reason = "x" * 150
        await harness.publish_raw(
            "in.dlq",
            b"{}",
            key=b"k",
            headers=[
                ("dlq.original.topic", b"in"),
                ("dlq.exception.type", b"core.streaming.errors.PermanentError"),
                ("dlq.exception.message", long_reason.encode()),
            ],
        )
        as_json = await invoke(harness, "dlq", "list", "in.dlq", "--json")
        [item] = [orjson.loads(line) for line in as_json.output.splitlines()]
        assert item["error_message"] == long_reason and item["replayed_at"] is None
        wide = await invoke(harness, "dlq", "list", "in.dlq", "--wide")
        assert "in[None]@None" in wide.output and "PermanentError" in wide.output
        missing = await invoke(harness, "dlq", "list", "nothing.dlq")
        assert missing.exit_code == 1 and "does not exist" in missing.output
        unnamed = await invoke(harness, "dlq", "replay", "in.dead", "--all", "--yes")
        assert unnamed.exit_code == 2
        assert "name the target topic explicitly (--to)" in unnamed.output
        nothing = await invoke(harness, "dlq", "replay", "in.dlq", "--yes")
        assert nothing.exit_code == 2 and "select what to replay" in nothing.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(
        rf"tradestream {re.escape(package_version())} \(Python [\d.]+\)\n", result.output
    )
    assert package_version() != "unknown"
