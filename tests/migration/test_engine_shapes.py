"""The old-shape trading engine runs unchanged on the adapter; the builder shape matches it.

Both run on the embedded broker and on real Kafka with a real redis-server.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.schemas.events import EventType
from core.schemas.topics import TopicMap
from tests.migration.conftest import Backend
from tests.migration.engine import (
    EngineHandlers,
    Router,
    TradingEngine,
    TradingEngineService,
    WeekdayHours,
)
from tests.migration.scenario import (
    UNREACHABLE_STRATEGY,
    Outputs,
    event_id,
    feed,
    metric,
    outputs,
)

COUNTERS = (
    "tradestream_messages_handled_total",
    "tradestream_duplicates_skipped_total",
    "tradestream_dead_lettered_total",
    "tradestream_retries_total",
)


@dataclass
class Run:
    engine: EngineHandlers
    router: Router
    outputs: Outputs
    counters: dict[str, float]
    commits: float


async def run_shape(backend: Backend, shape: str, run: str) -> Run:
    """Feed the scenario's inputs through one shape of the engine; collect what it did."""
    settings = backend.settings(run)
    namespace = settings.broker_namespace
    ticks_topic = f"{namespace}.market.ticks"
    router = Router([namespace, f"{namespace}-live"], unreachable_once={UNREACHABLE_STRATEGY})
    args = (None, settings, None, router, WeekdayHours())
    if shape == "legacy":
        with pytest.warns(DeprecationWarning, match=r"StreamServiceBuilder\('trading_engine'"):
            engine: TradingEngine | TradingEngineService = TradingEngine(
                *args, ticks_topic=ticks_topic
            )
    else:
        engine = TradingEngineService(*args, ticks_topic=ticks_topic)
    harness = backend.harness
    async with harness.running(engine):
        await feed(harness, TopicMap(namespace), ticks_topic)
    orchestrator = engine.orchestrator
    return Run(
        engine,
        router,
        await outputs(harness, [namespace, f"{namespace}-live"], namespace),
        {name: metric(orchestrator, name) for name in COUNTERS},
        metric(orchestrator, "tradestream_commits_total"),
    )


async def test_the_old_shape_engine_gets_dedup_dead_letters_and_metrics(backend: Backend) -> None:
    run = await run_shape(backend, "legacy", "legacy")
    by_type: dict[str, list[tuple[str, ...]]] = {}
    for event in run.outputs.events:
        by_type.setdefault(event[2], []).append(event)

    placed = by_type[EventType.ORDER_PLACED]
    fills = sorted(e[1] for e in placed if e[0] == "<ns>.orders")
    assert len(placed) == 8, "four orders on each of the two routed namespaces"
    assert sum('"fill_price":2500.0' in f for f in fills) == 2, "market buy and retried signal"
    assert sum('"fill_price":0.0' in f for f in fills) == 1, "a price of 0 is a price"
    assert sum('"fill_price":3950.0' in f for f in fills) == 1
    market_buy = [e for e in placed if '"signal_id":"sig-market-buy"' in e[1]]
    assert len(market_buy) == 2, "the duplicate record placed no second order"
    assert {e[5] for e in market_buy} == {event_id("market-buy")}, "causation is the input"
    assert {e[4] for e in market_buy} == {event_id("market-buy")}, "a chain starts at the input"
    assert {e[3] for e in placed} == {"trading_engine"}
    assert len(by_type[EventType.ORDER_REJECTED]) == 2, "no price for INFY, on each namespace"
    [closed] = by_type[EventType.REJECTED_SIGNAL]
    assert closed[0] == "<ns>.signals.rejected" and '"reason":"market closed"' in closed[1]

    assert sorted(d[2] for d in run.outputs.dead_letters) == [
        "core.streaming.errors.DecodeError",
        "pydantic_core._pydantic_core.ValidationError",
    ]
    assert {d[3] for d in run.outputs.dead_letters} == {"1"}, "permanent: dead-lettered at once"
    assert {d[4] for d in run.outputs.dead_letters} == {"<ns>.signals.validated"}

    assert run.counters == {
        "tradestream_messages_handled_total": 9.0,  # 3 ticks, 6 signals
        "tradestream_duplicates_skipped_total": 1.0,
        "tradestream_dead_lettered_total": 2.0,
        "tradestream_retries_total": 1.0,  # the router was away once
    }
    assert run.commits >= 1
    assert run.router.lookups == 6, "five open-market signals, one of them twice"
    assert run.engine.last_prices == {738561: 2500.0, 2953217: 3900.5, 0: 0.0}


async def test_the_builder_shape_gives_the_same_outputs_for_the_same_inputs(
    backend: Backend,
) -> None:
    legacy = await run_shape(backend, "legacy", "a")
    builder = await run_shape(backend, "builder", "b")
    assert legacy.outputs.events, "the comparison is not between two empty runs"
    assert builder.outputs == legacy.outputs
    assert builder.counters == legacy.counters
    assert builder.engine.last_prices == legacy.engine.last_prices
    assert sorted(builder.engine.signals_handled) == sorted(legacy.engine.signals_handled)
