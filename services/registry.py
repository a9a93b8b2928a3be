"""One place to construct any service of the trading pipeline by name.

The command line and the demo use :func:`build_service` and :func:`build_pipeline`
rather than wiring collaborators themselves, so every entry point builds a service
the same way: from ``Settings``, with an optional Redis client for dedup (the one
from settings otherwise) and an optional clock for the market calendar, the paper
traders and the tick timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from core.config.settings import Settings
from core.streaming.clients import Redis
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator

SERVICE_NAMES = ("market_data", "strategy_runner", "signal_validator", "trading_engine")
"""Every service, in the order data flows through them."""

PIPELINE_START_ORDER = ("trading_engine", "signal_validator", "strategy_runner", "market_data")
"""Consumers before producers, so nothing waits on a service not yet started."""

Clock = Callable[[], datetime]


class RunnableService(Protocol):
    """What an entry point needs from a service: start, stop, and its orchestrator."""

    @property
    def orchestrator(self) -> ServiceOrchestrator: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_service(
    name: str,
    settings: Settings,
    *,
    redis_client: Redis | None = None,
    clock: Clock | None = None,
    tick_rate: float | None = None,
    max_ticks: int | None = None,
    seed: int | None = None,
) -> RunnableService:
    """Build the service called ``name`` (one of :data:`SERVICE_NAMES`).

    ``tick_rate``, ``max_ticks`` and ``seed`` apply to ``market_data`` only.
    Service modules are imported here, on demand, to keep ``import services`` light.
    """
    config = settings.redpanda
    if name == "market_data":
        from services.market_data.service import MarketDataFeedService

        return MarketDataFeedService(
            config, settings, rate_per_s=tick_rate, seed=seed, clock=clock, max_ticks=max_ticks
        )
    if name == "strategy_runner":
        from services.strategy_runner.service import StrategyRunnerService

        return StrategyRunnerService(config, settings, redis_client=redis_client)
    if name == "signal_validator":
        from services.signal_validator.service import SignalValidatorService

        return SignalValidatorService(config, settings, redis_client)
    if name == "trading_engine":
        from services.trading_engine.execution_router import ExecutionRouter
        from services.trading_engine.market_hours import MarketHoursChecker
        from services.trading_engine.service import TradingEngineService
        from services.trading_engine.trader_factory import PaperTraderFactory

        return TradingEngineService(
            config,
            settings,
            redis_client,
            PaperTraderFactory.from_settings(settings, clock=clock),
            ExecutionRouter.from_settings(settings),
            MarketHoursChecker.from_settings(settings, clock=clock),
            clock=clock,
        )
    raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")


def build_pipeline(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tick_rate: float | None = None,
    max_ticks: int | None = None,
    redis_client: Redis | None = None,
    seed: int | None = None,
) -> list[RunnableService]:
    """All four services in start order (engine, validator, strategy runner, feed).

    Start them in list order and stop them in reverse, so the feed stops first
    and the engine drains last.
    """
    return [
        build_service(
            name,
            settings,
            redis_client=redis_client,
            clock=clock,
            tick_rate=tick_rate,
            max_ticks=max_ticks,
            seed=seed,
        )
        for name in PIPELINE_START_ORDER
    ]
