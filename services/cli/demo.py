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
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live

from core.config.settings import Settings
from core.schemas.events import EventType, SignalAction, TradingSignal
from core.schemas.topics import TopicMap
from core.streaming.clients import Redis, create_redis
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.lifecycle_coordinator import LifecycleCoordinator, Stage
from core.streaming.orchestration.ops_server import OpsServer
from services.cli.demo_view import RELIABILITY, RateWindow, ViewState, render
from services.cli.runner import exit_code, exit_requested, serve, services_coordinator
from services.market_data.service import MarketDataFeedService
from services.registry import RunnableService, build_pipeline
from services.signal_validator.service import SignalValidatorService
from services.strategy_runner.service import StrategyRunnerService
from services.trading_engine.service import TradingEngineService

DEMO_RETENTION_RECORDS = 2_000
"""Records per partition the demo's embedded broker keeps, unless set explicitly."""
DEMO_REMEMBERED_IDS = 5_000
"""Recent ids the demo's services keep (no restarts to survive), unless set explicitly."""
DEMO_DEDUP_TTL_S = 60
"""How long the demo's in-process dedup store remembers handled ids, unless set explicitly."""
HOUSEKEEPING_S = 10.0
CHAOS_TEXT = (
    "fault injection on: about once a second, in turn, a duplicate delivery (one event sent "
    "twice), an over-limit signal, or garbage bytes on {topic}; every 15th send of the "
    "validator fails like a network blip (retried)"
)


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: market open around the clock, one strategy on two namespaces.

    The services run without ops endpoints of their own: four in one process would
    all want the same port. :func:`pipeline_ops_server` serves the whole pipeline.
    On the embedded backends, memory stays bounded however long the demo runs:
    the broker keeps :data:`DEMO_RETENTION_RECORDS` per partition, the dedup
    store remembers ids for :data:`DEMO_DEDUP_TTL_S`, the services keep
    :data:`DEMO_REMEMBERED_IDS` recent ids, and the engine writes no ledger
    snapshots (nothing outlives the process), unless those settings are given
    explicitly.
    """
    trading = settings.trading
    update: dict[str, object] = {"market_always_open": True}
    if settings.redpanda.is_embedded:  # nothing outlives the process: no snapshots, fewer ids
        if "snapshot_every" not in trading.model_fields_set:
            update["snapshot_every"] = 0
        if "remembered_ids" not in trading.model_fields_set:
            update["remembered_ids"] = DEMO_REMEMBERED_IDS
    if not trading.strategy_routes:
        ns = settings.broker_namespace
        update["strategy_routes"] = {"momentum": [ns, f"{ns}-shadow"]}
    redpanda = settings.redpanda
    if redpanda.is_embedded and "embedded_retention_records" not in redpanda.model_fields_set:
        redpanda = redpanda.model_copy(
            update={"embedded_retention_records": DEMO_RETENTION_RECORDS}
        )
    reliability = settings.reliability
    if settings.redis.is_embedded and "dedup_ttl_seconds" not in reliability.model_fields_set:
        reliability = reliability.model_copy(update={"dedup_ttl_seconds": DEMO_DEDUP_TTL_S})
    return settings.model_copy(
        update={
            "trading": trading.model_copy(update=update),
            "redpanda": redpanda,
            "reliability": reliability,
            "observability": settings.observability.model_copy(update={"http_enabled": False}),
        }
    )


def rss_mb() -> float:
    """This process's resident memory in MB (Linux), NaN where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def pipeline_ops_server(
    settings: Settings, services: list[RunnableService], coordinator: LifecycleCoordinator
) -> OpsServer:
    """One /health and /metrics endpoint for every service of the pipeline."""
    names = {s.orchestrator.service_name for s in services}

    async def health() -> dict[str, Any]:
        reports = [r for name, r in (await coordinator.health()).items() if name in names]
        return {
            "status": "running" if all(r["ready"] for r in reports) else "starting",
            "live": all(r["live"] for r in reports),
            "ready": all(r["ready"] for r in reports),
            "services": {r["service"]: r for r in reports},
        }

    def registries() -> list[CollectorRegistry]:
        return [r for s in services for r in s.orchestrator.registries()]

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
    dedup_keys: int | None = None
    started_at: float = 0.0

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
            "cancelled": engine.orders_cancelled,
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

    def view(
        self,
        settings: Settings,
        counts: dict[str, float],
        rates: dict[str, float],
        elapsed: float,
        chaos: bool,
    ) -> ViewState:
        """One frame of the view."""
        header = (
            f"broker {settings.redpanda.bootstrap_servers} | dedup {settings.redis.safe_address} "
            f"| namespace {settings.broker_namespace} | {elapsed:,.1f} s"
        )
        retention = settings.redpanda.embedded_retention_records
        memory = f"memory: RSS {rss_mb():,.0f} MB"
        if settings.redpanda.is_embedded:
            memory += f" | embedded broker keeps {retention or 'all'} records per partition"
        if self.dedup_keys is not None:
            memory += f" | dedup keys {self.dedup_keys:,}"
        return ViewState(
            header=header,
            counts=counts,
            rates=rates,
            snapshot=self.engine.snapshot(),
            latencies=[
                ("tick -> signal", self.runner.tick_to_signal),
                ("signal -> order", self.engine.metrics.signal_to_order),
                ("order -> fill", self.engine.metrics.order_to_fill),
            ],
            chaos=CHAOS_TEXT.format(topic=TopicMap(settings.broker_namespace).signals_raw())
            if chaos
            else None,
            memory=memory,
        )


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


async def housekeeping(pipeline: Pipeline, settings: Settings, stop: asyncio.Event) -> None:
    """Every few seconds, let the in-process dedup store drop expired ids and count the rest.

    fakeredis removes an expired key only when something touches it or walks the
    keys; ``DBSIZE`` walks them. Without this, every id ever claimed would stay in
    memory. Nothing to do on a real Redis, which expires keys itself.
    """
    if not settings.redis.is_embedded:
        return
    client: Redis = create_redis(settings.redis)
    try:
        while not stop.is_set():
            pipeline.dedup_keys = int(await client.dbsize())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOUSEKEEPING_S)
    finally:
        await client.aclose()


async def _run_started(
    pipeline: Pipeline,
    settings: Settings,
    duration_s: float,
    live: bool,
    chaos: bool,
    console: Console,
) -> None:
    """Show the started pipeline until the end, a service's exit request, or cancellation."""
    pipeline.started_at = time.monotonic()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(exit_requested(pipeline.services))]
    if duration_s > 0:
        tasks.append(asyncio.create_task(asyncio.sleep(duration_s)))
    helpers = [asyncio.create_task(housekeeping(pipeline, settings, stop))]
    if chaos:
        helpers.append(asyncio.create_task(chaos_monkey(pipeline, settings, stop)))
        flaky = FlakyPublisher(pipeline.validator.publisher)
        pipeline.validator.publisher = flaky  # type: ignore[assignment]
    window = RateWindow()
    try:
        if live:
            with Live(console=console, refresh_per_second=4, transient=True) as view:
                while not any(t.done() for t in tasks):
                    counts = pipeline.counts()
                    elapsed = time.monotonic() - pipeline.started_at
                    frame = pipeline.view(settings, counts, window.add(counts), elapsed, chaos)
                    view.update(render(frame))
                    await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        for task in tasks:
            task.cancel()


async def run_demo(
    settings: Settings,
    *,
    duration_s: float,
    tick_rate: float,
    live: bool,
    chaos: bool,
    console: Console,
) -> int:
    """Run the pipeline for ``duration_s`` (0: until a signal); returns the exit code.

    The services (and the pipeline's ops endpoint) run on one lifecycle
    coordinator: it starts them in order, stops them on a signal, and its
    health report is what the endpoint serves.
    """
    ops_wanted = settings.observability.http_enabled
    settings = demo_settings(settings)
    pipeline = Pipeline.build(settings, tick_rate)
    coordinator = services_coordinator("demo", pipeline.services)
    if ops_wanted:
        ops = pipeline_ops_server(settings, pipeline.services, coordinator)
        coordinator.register("ops", ops, Stage.ENDPOINTS)
    await serve(coordinator, _run_started(pipeline, settings, duration_s, live, chaos, console))
    counts = pipeline.counts()
    elapsed = time.monotonic() - pipeline.started_at
    rates = {k: v / max(elapsed, 1e-9) for k, v in counts.items()}
    console.print(render(pipeline.view(settings, counts, rates, elapsed, chaos), final=True))
    return exit_code(coordinator, pipeline.services)
