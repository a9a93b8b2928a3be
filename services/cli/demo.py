"""The demo: the whole pipeline in one process with a live view of what flows.

Runs on whatever the settings select (by default the embedded broker and
dedup store). Unless ``chaos`` is off, it also injects the trouble a real
system sees, so the reliability path has something to show: a signal delivered
twice (dedup skips the copy), signals the validator must refuse, bytes that are
not JSON at all (dead-lettered with their original bytes), and a validator whose
sends now and then fail like a network blip (retried, then handled).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from core.config.settings import Settings
from core.schemas.events import EventType, SignalAction, TradingSignal
from core.schemas.topics import TopicMap
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.ops_server import OpsServer
from services.cli.runner import install_stop_signals, start_all, stop_all
from services.market_data.service import MarketDataFeedService
from services.registry import RunnableService, build_pipeline
from services.signal_validator.service import SignalValidatorService
from services.strategy_runner.service import StrategyRunnerService
from services.trading_engine.service import TradingEngineService

STAGES = (
    ("ticks", "market ticks"),
    ("raw", "raw signals"),
    ("validated", "validated signals"),
    ("rejected", "rejected signals"),
    ("placed", "orders placed"),
    ("filled", "orders filled"),
    ("order_rejected", "orders rejected"),
)
RELIABILITY = (
    ("duplicates", "duplicates skipped"),
    ("retries", "retries"),
    ("dead_lettered", "dead letters"),
    ("decode_failures", "undecodable messages"),
    ("commits", "offset commits"),
)


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: market open around the clock, and one strategy on two namespaces.

    The services run without ops endpoints of their own: four in one process would
    all want the same port. :func:`pipeline_ops_server` serves the whole pipeline.
    """
    trading = settings.trading
    update: dict[str, object] = {"market_always_open": True}
    if not trading.strategy_routes:
        ns = settings.broker_namespace
        update["strategy_routes"] = {"momentum": [ns, f"{ns}-shadow"]}
    return settings.model_copy(
        update={
            "trading": trading.model_copy(update=update),
            "observability": settings.observability.model_copy(update={"http_enabled": False}),
        }
    )


def pipeline_ops_server(settings: Settings, services: list[RunnableService]) -> OpsServer:
    """One /health and /metrics endpoint for every service of the pipeline."""
    orchestrators = [s.orchestrator for s in services]

    async def health() -> dict[str, Any]:
        reports = [await o.health() for o in orchestrators]
        return {
            "status": "running" if all(r["ready"] for r in reports) else "starting",
            "live": all(r["live"] for r in reports),
            "ready": all(r["ready"] for r in reports),
            "services": {r["service"]: r for r in reports},
        }

    def registries() -> list[CollectorRegistry]:
        return [r for o in orchestrators for r in o.registries()]

    obs = settings.observability
    return OpsServer(health, registries, host=obs.http_host, port=obs.http_port)


@dataclass
class Pipeline:
    """The four services of the demo, by role."""

    services: list[RunnableService]
    feed: MarketDataFeedService
    runner: StrategyRunnerService
    validator: SignalValidatorService
    engine: TradingEngineService
    chaos_sent: int = 0

    @classmethod
    def build(cls, settings: Settings, tick_rate: float) -> Pipeline:
        services = build_pipeline(settings, tick_rate=tick_rate)
        by_type = {type(s): s for s in services}
        return cls(
            services,
            by_type[MarketDataFeedService],  # type: ignore[arg-type]
            by_type[StrategyRunnerService],  # type: ignore[arg-type]
            by_type[SignalValidatorService],  # type: ignore[arg-type]
            by_type[TradingEngineService],  # type: ignore[arg-type]
        )

    def counts(self) -> dict[str, float]:
        """Totals per stage and of the reliability path, across all services."""
        engine = self.engine.stats
        out: dict[str, float] = {
            "ticks": self.feed.ticks_sent,
            "raw": sum(self.runner.signals_sent.values()) + self.chaos_sent,
            "validated": self.validator.stats.validated,
            "rejected": self.validator.stats.rejected + engine.signals_rejected,
            "placed": engine.orders_placed,
            "filled": engine.orders_filled,
            "order_rejected": engine.orders_rejected,
        }
        for key, _ in RELIABILITY:
            out[key] = 0.0
        for service in self.services:
            metrics = service.orchestrator.metrics
            if metrics is not None:
                snap = metrics.snapshot()
                for key, _ in RELIABILITY:
                    out[key] += snap.get(key, 0.0)
        return out


@dataclass
class RateWindow:
    """Per-key rates over the last few seconds of samples."""

    span_s: float = 3.0
    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def add(self, counts: dict[str, float]) -> dict[str, float]:
        now = time.monotonic()
        self.samples.append((now, counts))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span_s:
            self.samples.popleft()
        then, old = self.samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return dict.fromkeys(counts, 0.0)
        return {k: (v - old.get(k, 0.0)) / elapsed for k, v in counts.items()}


def render(
    pipeline: Pipeline,
    counts: dict[str, float],
    rates: dict[str, float],
    elapsed: float,
    settings: Settings,
    final: bool = False,
) -> Group:
    """The view: flow per stage, the reliability path, and P&L per strategy."""
    flow = Table("stage", "count", "per s", title="pipeline")
    for key, label in STAGES:
        flow.add_row(label, f"{int(counts[key]):,}", f"{rates.get(key, 0.0):,.1f}")
    reliability = Table("event", "count", title="reliability path")
    for key, label in RELIABILITY:
        reliability.add_row(label, f"{int(counts[key]):,}")
    pnl = Table("strategy", "P&L", title="paper P&L, marked to the last tick")
    snapshot = pipeline.engine.snapshot()
    for strategy, value in sorted(snapshot.pnl_by_strategy.items()):
        style = "green" if value >= 0 else "red"
        pnl.add_row(strategy, "n/a" if math.isnan(value) else f"[{style}]{value:,.2f}[/]")
    backend = settings.redpanda.bootstrap_servers
    title = "summary" if final else "tradestream demo (Ctrl-C to stop)"
    header = Panel(
        f"broker {backend} | dedup {settings.redis.safe_address} | "
        f"namespace {settings.broker_namespace} | {elapsed:,.1f} s",
        title=title,
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_row(flow, reliability)
    return Group(header, grid, pnl)


class FlakyPublisher:
    """Fails every ``every``-th send with a connection error, like a brief network blip.

    The handler that sent fails with a retryable error, the reliability layer
    retries it, and the retry succeeds: the demo's "retries" row.
    """

    def __init__(self, inner: MessageProducer, every: int = 15) -> None:
        self._inner = inner
        self._every = every
        self._sends = 0

    async def send(self, *args: Any, **kwargs: Any) -> str:
        self._sends += 1
        if self._sends % self._every == 0:
            raise ConnectionError("injected by the demo: downstream briefly unreachable")
        return await self._inner.send(*args, **kwargs)


async def chaos_monkey(pipeline: Pipeline, settings: Settings, stop: asyncio.Event) -> None:
    """Every second or so, publish a duplicate delivery, an invalid signal or garbage."""
    producer = MessageProducer(settings.redpanda, "demo-chaos")
    topic = TopicMap(settings.broker_namespace).signals_raw()
    instruments = list(settings.trading.instruments.items())
    rng = random.Random(7)
    try:
        await producer.start()
        turn = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                break
            symbol, token = rng.choice(instruments)
            kind = turn % 3
            turn += 1
            if kind == 0:
                # The same event delivered twice: one handling, one duplicate skipped.
                signal = TradingSignal(
                    strategy_id="momentum",
                    instrument_token=token,
                    symbol=symbol,
                    action=SignalAction.BUY,
                    quantity=1,
                )
                envelope = producer.build_envelope(signal, EventType.RAW_SIGNAL)
                body = orjson.dumps(envelope)
                headers = producer.envelope_headers(envelope)
                for _ in range(2):
                    await producer.send_raw(topic, b"momentum", body, headers)
                pipeline.chaos_sent += 1
            elif kind == 1:
                # Business-invalid: above the validator's quantity limit.
                signal = TradingSignal(
                    strategy_id="chaos",
                    instrument_token=token,
                    symbol=symbol,
                    action=SignalAction.SELL,
                    quantity=settings.trading.max_quantity + 1,
                )
                await producer.send(topic, "chaos", signal, EventType.RAW_SIGNAL)
                pipeline.chaos_sent += 1
            else:
                # Not JSON at all: dead-lettered, original bytes kept.
                await producer.send_raw(topic, b"chaos", b"\x00\xffnot-json-at-all")
    finally:
        await producer.stop()


async def _run_started(
    pipeline: Pipeline,
    settings: Settings,
    stop: asyncio.Event,
    ops: OpsServer | None,
    duration_s: float,
    live: bool,
    chaos: bool,
    console: Console,
) -> float:
    """Run the started pipeline until the end, then stop it; returns when it started."""
    started = time.monotonic()
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
    if duration_s > 0:
        tasks.append(asyncio.create_task(asyncio.sleep(duration_s)))
    tasks.extend(
        asyncio.create_task(s.orchestrator.coordinator.wait_stop_requested())
        for s in pipeline.services
    )
    monkey = None
    if chaos:
        monkey = asyncio.create_task(chaos_monkey(pipeline, settings, stop))
        flaky = FlakyPublisher(pipeline.validator.publisher)
        pipeline.validator.publisher = flaky  # type: ignore[assignment]
    window = RateWindow()
    try:
        if ops is not None:
            await ops.start()
        if live:
            with Live(console=console, refresh_per_second=4, transient=True) as view:
                while not any(t.done() for t in tasks):
                    counts = pipeline.counts()
                    elapsed = time.monotonic() - started
                    view.update(render(pipeline, counts, window.add(counts), elapsed, settings))
                    await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        if monkey is not None:
            await asyncio.gather(monkey, return_exceptions=True)
        for task in tasks:
            task.cancel()
        if ops is not None:
            await ops.stop()
        await stop_all(pipeline.services)
    return started


async def run_demo(
    settings: Settings,
    *,
    duration_s: float,
    tick_rate: float,
    live: bool,
    chaos: bool,
    console: Console,
) -> int:
    """Run the pipeline for ``duration_s`` (0: until a signal); returns the exit code."""
    ops_wanted = settings.observability.http_enabled
    settings = demo_settings(settings)
    pipeline = Pipeline.build(settings, tick_rate)
    ops = pipeline_ops_server(settings, pipeline.services) if ops_wanted else None
    stop = asyncio.Event()
    installed = install_stop_signals(stop)
    try:
        await start_all(pipeline.services)
        started = await _run_started(
            pipeline, settings, stop, ops, duration_s, live, chaos, console
        )
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    counts = pipeline.counts()
    console.print(
        render(
            pipeline,
            counts,
            {k: v / max(time.monotonic() - started, 1e-9) for k, v in counts.items()},
            time.monotonic() - started,
            settings,
            final=True,
        )
    )
    return max(s.orchestrator.coordinator.exit_code for s in pipeline.services)
