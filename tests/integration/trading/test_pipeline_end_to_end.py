"""The whole trading pipeline through the test harness, on the embedded default and on Kafka.

Feed, strategy runner, validator and engine run with their real reliability paths.
Raw signals of every kind are injected next to the runner's own: valid ones,
malformed ones, unknown instruments, one event delivered twice, a signal id reused,
and signals arriving after the close (the market clock is injected). Afterwards
every raw signal must have exactly one outcome, order ids must be unique, and
every outcome must carry the correlation id of the raw signal it came from.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings, TradingSettings
from core.schemas.events import (
    EventEnvelope,
    EventType,
    OrderType,
    SignalAction,
    TradingSignal,
    generate_uuid7,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.testing import StreamTestHarness
from services.market_data.service import MarketDataFeedService
from services.registry import SERVICE_NAMES, RunnableService, build_pipeline, build_service
from services.signal_validator.service import DUPLICATE_SIGNAL_ID
from services.trading_engine.market_hours import IST
from services.trading_engine.orders import client_order_id
from services.trading_engine.service import TradingEngineService

pytestmark = pytest.mark.timeout(60)

OPEN_AT = datetime(2026, 11, 25, 10, 30, tzinfo=IST)
CLOSED_AT = datetime(2026, 11, 25, 16, 0, tzinfo=IST)
RELIANCE = 738561
TCS = 2953217

Key = tuple[str | None, str | None]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def running(
    harness: StreamTestHarness, services: Sequence[RunnableService]
) -> AsyncIterator[None]:
    """Run every service through the harness; they stop in reverse order."""
    async with AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(harness.running(service))
        yield


def signal(
    strategy: str = "momentum",
    *,
    symbol: str = "RELIANCE",
    token: int = RELIANCE,
    action: SignalAction = SignalAction.BUY,
    limit: float | None = None,
    signal_id: str | None = None,
) -> dict[str, Any]:
    return TradingSignal(
        signal_id=signal_id or generate_uuid7(),
        strategy_id=strategy,
        instrument_token=token,
        symbol=symbol,
        action=action,
        quantity=5,
        order_type=OrderType.LIMIT if limit is not None else OrderType.MARKET,
        price=limit,
    ).model_dump(mode="json")


def key_of(envelope: dict[str, Any]) -> Key:
    """Which raw signal an envelope belongs to: its chain and its signal id."""
    data = envelope["data"]
    signal_id = data.get("signal_id") or (data.get("original_signal") or {}).get("signal_id")
    return envelope.get("correlation_id"), signal_id


@pytest.fixture(params=["memory", "kafka"])
def backend(request: pytest.FixtureRequest) -> str:
    """The pipeline runs on the embedded default and on real Kafka and Redis."""
    if request.param == "kafka" and not (
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL")
    ):
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS/REDIS_URL not set; run via scripts/test.sh")
    return str(request.param)


def _harness(backend: str) -> tuple[StreamTestHarness, str, str]:
    """A harness for ``backend`` and the two namespaces the test trades on."""
    if backend == "memory":
        paper, live = "paper", "live"
        base = Settings(
            broker_namespace=paper,
            trading=TradingSettings(strategy_routes={"momentum": [paper, live]}),
        )
        return StreamTestHarness(base), paper, live
    run = uuid4().hex[:8]
    paper, live = f"e2e-{run}-paper", f"e2e-{run}-live"
    base = Settings(
        broker_namespace=paper,
        trading=TradingSettings(strategy_routes={"momentum": [paper, live]}),
        redpanda=RedpandaSettings(
            bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], group_id_prefix=f"e2e-{run}"
        ),
        redis=RedisSettings(url=SecretStr(os.environ["REDIS_URL"])),
    )
    return StreamTestHarness(base, embedded=False), paper, live


async def test_every_raw_signal_ends_in_exactly_one_outcome(backend: str) -> None:
    clock = Clock(OPEN_AT)
    harness, paper, live = _harness(backend)
    NAMESPACES = (paper, live)
    ROUTES = {"momentum": [paper, live]}
    async with harness:
        settings = harness.settings
        topics = TopicMap(paper)
        services = build_pipeline(settings, clock=clock, tick_rate=5_000, max_ticks=60, seed=11)
        engine, feed = services[0], services[-1]
        assert isinstance(engine, TradingEngineService)
        assert isinstance(feed, MarketDataFeedService)

        async with running(harness, services):
            await feed.wait_finished()
            await harness.wait_idle()
            assert feed.ticks_sent == 60
            assert set(engine.last_prices) == set(settings.trading.instruments.values())

            raw = topics.signals_raw()
            expected: dict[str, str] = {}

            async def publish(data: Any, expect: str, strategy: str = "momentum") -> str:
                corr = f"corr-{len(expected)}"
                expected[corr] = expect
                await harness.publish(
                    raw, data, key=strategy, event_type=EventType.RAW_SIGNAL, correlation_id=corr
                )
                return corr

            await publish(signal(), "orders")
            await publish(signal(action=SignalAction.SELL, symbol="TCS", token=TCS), "orders")
            await publish(signal("mean_reversion", limit=2_500.0), "orders")  # rests
            await publish(signal("mean_reversion", limit=3_400.0), "orders")  # fills at once
            await publish(signal("mean_reversion", limit=1.0), "limit price 1 is 100% from")
            await publish(
                {"strategy_id": "momentum", "symbol": "RELIANCE", "quantity": -3},
                "invalid signal",
            )
            await publish(signal(symbol="ACME", token=999), "unknown instrument ACME")
            reused = generate_uuid7()
            await publish(signal(signal_id=reused), "orders")
            await publish(signal(signal_id=reused), DUPLICATE_SIGNAL_ID)
            twice = EventEnvelope(
                type=EventType.RAW_SIGNAL.value,
                source="test",
                correlation_id="corr-twice",
                data=signal(),
            )
            expected["corr-twice"] = "orders"
            await harness.publish(raw, twice, key="momentum")
            await harness.publish(raw, twice, key="momentum")
            await harness.wait_idle()
            await harness.publish(raw, twice, key="momentum")
            await harness.wait_idle()

            clock.now = CLOSED_AT
            await publish(signal(), "market closed: after close 15:30 IST")
            await publish(signal("mean_reversion"), "market closed: after close 15:30 IST")
            await harness.wait_idle()

            snapshot = engine.snapshot()

        # ------------------------------------------------------------ the raw signals
        raw_all = await harness.read(topics.signals_raw())
        raw_envelopes = {e["id"]: e for e in raw_all}
        assert len(raw_all) == len(raw_envelopes) + 2
        raw_keys = [key_of(e) for e in raw_envelopes.values()]
        assert len(set(raw_keys)) == len(raw_keys), "raw signals must be distinguishable"
        assert all(corr is not None for corr, _ in raw_keys)
        runner_signals = [e for e in raw_envelopes.values() if e["source"] == "strategy_runner"]
        assert runner_signals, "the strategy runner produced no signal from the feed"

        # ------------------------------------------------------------ their outcomes
        rejections: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for envelope in await harness.read(topics.signals_rejected()):
            assert envelope["type"] == EventType.REJECTED_SIGNAL
            rejections[key_of(envelope)].append(envelope)
        orders: dict[Key, list[str]] = defaultdict(list)
        placed_ids: list[str] = []
        filled_ids: list[str] = []
        for ns in NAMESPACES:
            for envelope in await harness.read(TopicMap(ns).orders()):
                assert envelope["type"] == EventType.ORDER_PLACED
                orders[key_of(envelope)].append(ns)
                placed_ids.append(envelope["data"]["client_order_id"])
            for envelope in await harness.read(TopicMap(ns).executions()):
                if envelope["type"] == EventType.ORDER_REJECTED:
                    orders[key_of(envelope)].append(ns)
                else:
                    assert envelope["type"] == EventType.ORDER_FILLED
                    filled_ids.append(envelope["data"]["client_order_id"])
                    assert envelope["data"]["client_order_id"] in placed_ids

        assert set(rejections) | set(orders) <= set(raw_keys), "outcome without a raw signal"
        for envelope in raw_envelopes.values():
            key = key_of(envelope)
            strategy = envelope["data"].get("strategy_id")
            if key in rejections:
                assert len(rejections[key]) == 1, f"{key}: {rejections[key]}"
                assert key not in orders, f"{key} was rejected and ordered"
            else:
                targets = ROUTES.get(strategy, [paper])
                assert sorted(orders.get(key, [])) == sorted(targets), key

        assert len(placed_ids) == len(set(placed_ids)), "duplicate client order ids placed"
        assert len(filled_ids) == len(set(filled_ids)), "an order filled twice"

        # ------------------------------------------------------------ the injected cases
        by_corr: dict[str, Key] = {corr: (corr, sid) for corr, sid in raw_keys if corr}
        for corr, expect in expected.items():
            key = by_corr[corr]
            if expect == "orders":
                assert key not in rejections, rejections.get(key)
                assert orders[key], corr
            else:
                [rejection] = rejections[key]
                assert rejection["data"]["reason"].startswith(expect), rejection
                assert rejection["correlation_id"] == corr
        momentum_buy = by_corr["corr-0"]
        assert sorted(orders[momentum_buy]) == sorted([live, paper])
        reused_key = by_corr["corr-7"]
        assert reused_key[1] == reused
        oids = {client_order_id(reused, ns) for ns in NAMESPACES}
        assert oids <= set(placed_ids)
        stages = Counter(r["data"]["stage"] for group in rejections.values() for r in group)
        assert stages["trading_engine"] == 3  # two after the close, one price out of band

        # ------------------------------------------------------------ nothing dead-lettered
        for topic in (
            topics.signals_raw(),
            topics.signals_validated(),
            TopicNames.MARKET_TICKS,
        ):
            assert await harness.read_dead_letters(topic) == []

        assert snapshot.stats["signals_rejected"] == 3
        assert snapshot.stats["orders_placed"] == len(placed_ids)
        assert set(snapshot.pnl_by_namespace) == set(NAMESPACES)


async def test_the_feed_stops_cleanly_mid_stream() -> None:
    async with StreamTestHarness() as harness:
        feed = MarketDataFeedService(harness.config, harness.settings, rate_per_s=200, seed=1)
        await feed.start()
        await harness.wait_for(TopicNames.MARKET_TICKS, 5)
        await feed.stop()
        assert not feed.is_running
        sent = feed.ticks_sent
        ticks = harness.produced(TopicNames.MARKET_TICKS)
        assert len(ticks) == sent >= 5
        assert {t["type"] for t in ticks} == {EventType.MARKET_TICK.value}
        assert all(t["correlation_id"] for t in ticks)
        assert len({t["correlation_id"] for t in ticks}) == sent
        records = harness.records(TopicNames.MARKET_TICKS)
        assert {r.key for r in records} <= {
            str(t).encode() for t in harness.settings.trading.instruments.values()
        }
        await feed.stop()
        assert feed.ticks_sent == sent


async def test_registry_builds_every_service_by_name() -> None:
    settings = Settings()
    for name in SERVICE_NAMES:
        service = build_service(name, settings)
        assert service.orchestrator.service_name == name
    assert [s.orchestrator.service_name for s in build_pipeline(settings)] == [
        "trading_engine",
        "signal_validator",
        "strategy_runner",
        "market_data",
    ]
    with pytest.raises(ValueError, match="unknown service 'nope'"):
        build_service("nope", settings)
