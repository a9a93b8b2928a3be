"""The per-service shape switch: read from the environment, built by ``build_selected``,
and flipped (stop, flip, start) over one topic without losing or repeating a message.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable

import pytest

from core.config.settings import Settings, SettingsError, load_settings
from core.schemas.events import EventType, OrderType
from core.schemas.topics import TopicMap
from core.streaming.legacy import RunnableService, build_selected, selected_shape, serve
from core.streaming.testing import StreamTestHarness
from tests.migration.conftest import Backend
from tests.migration.engine import Router, TradingEngine, TradingEngineService, WeekdayHours
from tests.migration.scenario import metric, publish, signal_fields, validated

VARIABLE = "TRADESTREAM_SERVICES__trading_engine__shape"


def env_settings(monkeypatch: pytest.MonkeyPatch, base: Settings, **variables: str) -> Settings:
    """Settings as a deployment gets them: ``base``'s servers and ``variables``, from env."""
    for name in [n for n in os.environ if n.upper().startswith("TRADESTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TRADESTREAM_BROKER_NAMESPACE", base.broker_namespace)
    monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", base.redpanda.bootstrap_servers)
    monkeypatch.setenv("TRADESTREAM_REDPANDA__GROUP_ID_PREFIX", base.redpanda.group_id_prefix)
    monkeypatch.setenv("TRADESTREAM_REDIS__URL", base.redis.url.get_secret_value())
    monkeypatch.setenv("TRADESTREAM_RELIABILITY__RETRY_BACKOFF_INITIAL_MS", "5")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return load_settings()


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


def test_the_shape_is_read_per_service_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Settings()
    assert selected_shape("trading_engine", env_settings(monkeypatch, base)) == "legacy"
    settings = env_settings(monkeypatch, base, **{VARIABLE: "builder"})
    assert selected_shape("trading_engine", settings) == "builder"
    assert selected_shape("Trading-Engine", settings) == "builder", "names match as elsewhere"
    assert selected_shape("signal_validator", settings) == "legacy"
    everyone = env_settings(
        monkeypatch, base, TRADESTREAM_RELIABILITY__SHAPE="builder", **{VARIABLE: "legacy"}
    )
    assert selected_shape("signal_validator", everyone) == "builder"
    assert selected_shape("trading_engine", everyone) == "legacy", "the service's own wins"


def test_an_unknown_shape_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SettingsError) as caught:
        env_settings(monkeypatch, Settings(), **{VARIABLE: "new"})
    assert "TRADESTREAM_SERVICES__trading_engine__SHAPE" in str(caught.value)
    assert "'legacy' or 'builder'" in str(caught.value)


def _factories(settings: Settings, built: list[str]) -> dict[str, Callable[[], RunnableService]]:
    def legacy() -> RunnableService:
        built.append("legacy")
        return TradingEngine(None, settings, None, Router([]), WeekdayHours())

    def builder() -> RunnableService:
        built.append("builder")
        return TradingEngineService(None, settings, None, Router([]), WeekdayHours())

    return {"legacy": legacy, "builder": builder}


@pytest.mark.parametrize("shape", ["legacy", "builder"])
def test_build_selected_builds_only_the_selected_shape_and_reports_it(
    shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = env_settings(monkeypatch, Settings(), **{VARIABLE: shape})
    built: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        service = build_selected("trading_engine", settings, **_factories(settings, built))
    assert built == [shape]
    expected = TradingEngine if shape == "legacy" else TradingEngineService
    assert type(service) is expected
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == (1 if shape == "legacy" else 0)
    orchestrator = service.orchestrator
    assert metric(orchestrator, "tradestream_service_shape", shape=shape) == 1
    other = "builder" if shape == "legacy" else "legacy"
    assert metric(orchestrator, "tradestream_service_shape", shape=other) == 0


def test_build_selected_refuses_a_factory_that_makes_another_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = env_settings(monkeypatch, Settings(), **{VARIABLE: "builder"})
    factories = _factories(settings, [])
    with (
        pytest.raises(ValueError, match="both shapes must use the name the switch uses"),
        pytest.warns(DeprecationWarning),  # signal_validator runs the legacy shape
    ):
        build_selected("signal_validator", settings, **factories)


async def test_serve_runs_the_services_own_start_and_stop() -> None:
    calls: list[str] = []

    class Engine(TradingEngine):
        async def start(self) -> None:
            calls.append("start")
            await super().start()

        async def stop(self) -> None:
            await super().stop()
            calls.append("stop")

    async with StreamTestHarness() as harness:
        with pytest.warns(DeprecationWarning):
            engine = Engine(None, harness.settings, None, Router([]), WeekdayHours())
        assert await serve(engine, until=asyncio.sleep(0.05)) == 0
    assert calls == ["start", "stop"]
    assert not engine.orchestrator.is_live


@pytest.mark.parametrize("dedup", ["false", "true"])
async def test_flipping_the_switch_loses_and_repeats_nothing(
    backend: Backend, dedup: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legacy, stopped mid-stream; builder; legacy again: every signal handled once.

    With dedup off nothing but the committed offsets keeps a message from being
    handled twice; with it on, nothing is found to skip either.
    """
    harness = backend.harness
    base = backend.settings("flip")
    namespace = base.broker_namespace
    topic = TopicMap(namespace).signals_validated()
    names = [f"flip-{n}" for n in range(80)]
    records = [
        validated(
            name,
            **signal_fields(n, ("momentum", "mean_reversion", "pairs")[n % 3]),
            order_type=OrderType.LIMIT,
            price=2500.0,
        )
        for n, name in enumerate(names)
    ]
    engines: list[TradingEngine | TradingEngineService] = []

    Engine = TradingEngine | TradingEngineService

    async def run(shape: str, stop_when: Callable[[Engine], bool] | None = None) -> None:
        """Build the shape the switch selects; run it until ``stop_when``, or until idle."""
        settings = env_settings(
            monkeypatch, base, TRADESTREAM_RELIABILITY__DEDUP_ENABLED=dedup, **{VARIABLE: shape}
        )
        args = (None, settings, None, Router([namespace], delay_s=0.005), WeekdayHours())
        ticks = f"{namespace}.ticks"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            service = build_selected(
                "trading_engine",
                settings,
                legacy=lambda: TradingEngine(*args, ticks_topic=ticks),
                builder=lambda: TradingEngineService(*args, ticks_topic=ticks),
            )
        assert isinstance(service, TradingEngine if shape == "legacy" else TradingEngineService)
        engines.append(service)
        async with harness.running(service):
            if stop_when is None:
                await harness.wait_idle(timeout_s=30)
            else:
                await eventually(lambda: stop_when(service), 30, f"the {shape} shape's progress")

    await publish(harness, topic, records[:60])
    await run("legacy", stop_when=lambda engine: len(engine.signals_handled) >= 10)
    stopped_at = len(engines[0].signals_handled)
    assert stopped_at < 60, "the first stop came with messages still to handle"
    await run("builder")
    await publish(harness, topic, records[60:])
    await run("legacy")

    handled = Counter(s for engine in engines for s in engine.signals_handled)
    assert handled == Counter(f"sig-{name}" for name in names), "each signal handled once"
    assert all(len(engine.signals_handled) for engine in engines), "each shape had its share"
    orders = Counter(
        event["data"]["signal_id"]
        for event in await harness.read(TopicMap(namespace).orders())
        if event["type"] == EventType.ORDER_PLACED
    )
    assert orders == handled, "one order per signal, none lost, none repeated"
    skipped = sum(metric(e.orchestrator, "tradestream_duplicates_skipped_total") for e in engines)
    assert skipped == 0
