"""Strategies that turn market ticks into raw trading signals.

Each strategy watches runs of consecutive price moves per instrument:

* ``momentum`` follows a run: BUY after ``run_length`` rises in a row, SELL after
  as many falls, as MARKET orders;
* ``mean_reversion`` fades it: SELL after the rises, BUY after the falls, as LIMIT
  orders ``limit_offset_ticks`` better than the last price, so some rest until a
  later tick crosses them.

An unchanged price ends a run, and a signal ends it too, so a long trend gives a
signal every ``run_length`` moves rather than on every tick. The signal id is
derived from strategy id and tick event id: a redelivered tick yields the same
signal id, which the validator refuses as a duplicate, never a second order.
Signals go to ``TopicMap(broker_namespace).signals_raw()`` keyed by strategy id and
continue the tick's correlation chain; a signal's ``timestamp`` is when the
strategy emitted it. A value on ``market.ticks`` that is not a tick envelope is
dead-lettered with the reason.

Strategy state survives a restart (:mod:`services.strategy_runner.warmup`): at
start the runner replays the recent ticks through its strategies without
publishing, so it continues where an uninterrupted runner would be.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    generate_uuid7,
    utc_now,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import Redis
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from services.common.envelopes import require_event
from services.common.history import restoring
from services.common.latency import LatencyRecorder
from services.strategy_runner.warmup import Warmup

logger = logging.getLogger(__name__)

SERVICE_NAME = "strategy_runner"
TICK_SIZE = 0.05
SIGNAL_ID_NAMESPACE = uuid.UUID("2b0f6c1e-8d4a-5e3b-9c71-4a6e0d2f8b13")
"""Fixed UUIDv5 namespace of derived signal ids."""
MAX_UNSENT = 1_024


def signal_id_for(strategy_id: str, tick_event_id: str) -> str:
    """The id of the signal ``strategy_id`` derives from one tick: stable across redelivery."""
    return str(uuid.uuid5(SIGNAL_ID_NAMESPACE, f"{strategy_id}:{tick_event_id}"))


@dataclass(frozen=True, slots=True)
class SignalIntent:
    """What a strategy wants to do after a tick."""

    action: SignalAction
    quantity: int
    order_type: OrderType = OrderType.MARKET
    price: float | None = None


class Strategy(Protocol):
    """A rule fed with every tick, in order per instrument."""

    @property
    def strategy_id(self) -> str: ...

    def on_price(self, instrument_token: int, price: float) -> SignalIntent | None: ...


class RunCounter:
    """Length of the current run of moves per instrument: +n rises, -n falls."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._run: dict[int, int] = {}

    def update(self, instrument_token: int, price: float) -> int:
        """Record ``price``; returns the run length including this move (0 if flat)."""
        last = self._last.get(instrument_token)
        self._last[instrument_token] = price
        run = self._run.get(instrument_token, 0)
        if last is None or price == last:
            run = 0
        elif price > last:
            run = run + 1 if run > 0 else 1
        else:
            run = run - 1 if run < 0 else -1
        self._run[instrument_token] = run
        return run

    def reset(self, instrument_token: int) -> None:
        """End the current run (the last price is kept)."""
        self._run[instrument_token] = 0


class MomentumStrategy:
    """BUY after ``run_length`` rises in a row, SELL after as many falls (MARKET)."""

    def __init__(
        self, strategy_id: str = "momentum", *, run_length: int = 3, quantity: int = 10
    ) -> None:
        if run_length < 1 or quantity < 1:
            raise ValueError("run_length and quantity must be at least 1")
        self._id = strategy_id
        self.run_length = run_length
        self.quantity = quantity
        self._runs = RunCounter()

    @property
    def strategy_id(self) -> str:
        """The id signals of this strategy carry."""
        return self._id

    def on_price(self, instrument_token: int, price: float) -> SignalIntent | None:
        """A MARKET signal in the run's direction once the run is long enough."""
        run = self._runs.update(instrument_token, price)
        if abs(run) < self.run_length:
            return None
        self._runs.reset(instrument_token)
        action = SignalAction.BUY if run > 0 else SignalAction.SELL
        return SignalIntent(action, self.quantity)


class MeanReversionStrategy:
    """SELL after ``run_length`` rises, BUY after as many falls, as LIMIT orders.

    The limit is ``limit_offset_ticks`` better than the last price (below it for a
    BUY, above for a SELL), so the order rests until the price comes back. A BUY
    limit is never below zero: it falls back to the last price, and no signal is
    given when that is zero too.
    """

    def __init__(
        self,
        strategy_id: str = "mean_reversion",
        *,
        run_length: int = 4,
        quantity: int = 5,
        limit_offset_ticks: int = 1,
    ) -> None:
        if run_length < 1 or quantity < 1 or limit_offset_ticks < 0:
            raise ValueError("run_length and quantity must be >= 1, limit_offset_ticks >= 0")
        self._id = strategy_id
        self.run_length = run_length
        self.quantity = quantity
        self.limit_offset_ticks = limit_offset_ticks
        self._runs = RunCounter()

    @property
    def strategy_id(self) -> str:
        """The id signals of this strategy carry."""
        return self._id

    def on_price(self, instrument_token: int, price: float) -> SignalIntent | None:
        """A LIMIT signal against the run once the run is long enough."""
        run = self._runs.update(instrument_token, price)
        if abs(run) < self.run_length:
            return None
        self._runs.reset(instrument_token)
        offset = self.limit_offset_ticks * TICK_SIZE
        if run > 0:
            return SignalIntent(
                SignalAction.SELL, self.quantity, OrderType.LIMIT, round(price + offset, 2)
            )
        limit = round(price - offset, 2)
        if limit <= 0:
            limit = price
        if limit <= 0:
            return None
        return SignalIntent(SignalAction.BUY, self.quantity, OrderType.LIMIT, limit)


def default_strategies() -> list[Strategy]:
    """The strategies the runner uses when given none."""
    return [MomentumStrategy(), MeanReversionStrategy()]


def build_signal(
    strategy_id: str,
    tick: MarketTick,
    intent: SignalIntent,
    tick_event_id: str | None,
    emitted_at: datetime | None = None,
) -> TradingSignal:
    """The raw signal for ``intent`` on ``tick``; its id is derived from the tick's id.

    Its timestamp is ``emitted_at`` (default: now), when the strategy emitted it.
    """
    return TradingSignal(
        signal_id=signal_id_for(strategy_id, tick_event_id) if tick_event_id else generate_uuid7(),
        strategy_id=strategy_id,
        instrument_token=tick.instrument_token,
        symbol=tick.symbol,
        action=intent.action,
        quantity=intent.quantity,
        order_type=intent.order_type,
        price=intent.price,
        timestamp=emitted_at or utc_now(),
    )


class StrategyRunnerService:
    """Consumes ticks, runs every strategy on each, publishes their raw signals."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        *,
        strategies: Sequence[Strategy] | None = None,
        redis_client: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.strategies: list[Strategy] = (
            list(strategies) if strategies is not None else default_strategies()
        )
        ids = [s.strategy_id for s in self.strategies]
        if len(set(ids)) != len(ids):
            raise ValueError(f"strategy ids must be unique, got {ids}")
        self.topics = TopicMap(settings.broker_namespace)
        self.ticks_handled = 0
        self.signals_sent: dict[str, int] = dict.fromkeys(ids, 0)
        self._unsent: OrderedDict[str, list[TradingSignal]] = OrderedDict()
        self.warmup = Warmup(
            self.run_strategies, self.topics.signals_raw(), settings.trading.max_price_age_s
        )
        self.registry = CollectorRegistry()
        self.tick_to_signal = LatencyRecorder(
            "tradestream_trading_tick_to_signal_seconds",
            "From a market tick's timestamp to the broker acknowledging a signal it caused.",
            self.registry,
            SERVICE_NAME,
        )
        prefix = settings.redpanda.group_id_prefix
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .with_redis(redis_client)
            .add_producer(topics=[self.topics.signals_raw()])
            .add_consumer_handler(
                [TopicNames.MARKET_TICKS], f"{prefix}.{SERVICE_NAME}.ticks", self._handle_tick
            )
            .build()
        )
        self.orchestrator.add_metrics_registry(self.registry)
        self.publisher = self.orchestrator.producer

    async def start(self) -> None:
        """Replay the recent ticks through the strategies (no publishing), then consume."""
        trading = self.settings.trading
        if trading.restore_on_start and trading.warmup_ticks > 0:
            await restoring(
                "replaying recent ticks through the strategies",
                self.settings,
                lambda: self.warmup.run(self.settings.redpanda, trading.warmup_ticks),
            )
        await self.orchestrator.start()

    async def stop(self) -> None:
        """Drain and stop."""
        await self.orchestrator.stop()

    async def _handle_tick(self, message: dict[str, Any]) -> None:
        """Run the strategies on one tick and publish what they signal.

        Signals computed for a tick whose publishing failed are kept and sent by
        the retry, instead of running the strategies on the same tick again.
        """
        data = require_event(message, EventType.MARKET_TICK.value, TopicNames.MARKET_TICKS)
        key = str(message["id"])
        tick = MarketTick.model_validate(data)
        pending = self._unsent.pop(key, None)
        if pending is None:
            replayed = self.warmup.take(key, tick)
            if replayed is not None:
                pending = replayed  # applied at warm-up; only what was never published
            else:
                pending = self.run_strategies(tick, key)
                self.ticks_handled += 1
        for i, signal in enumerate(pending):
            try:
                await self.publisher.send(
                    self.topics.signals_raw(), signal.strategy_id, signal, EventType.RAW_SIGNAL
                )
            except BaseException:
                self._keep_unsent(key, pending[i:])
                raise
            self.signals_sent[signal.strategy_id] += 1
            self.tick_to_signal.observe((utc_now() - tick.timestamp).total_seconds())

    def run_strategies(self, tick: MarketTick, tick_event_id: str) -> list[TradingSignal]:
        """Feed one tick to every strategy; the signals they emit."""
        signals = []
        for strategy in self.strategies:
            intent = strategy.on_price(tick.instrument_token, tick.last_price)
            if intent is not None:
                signals.append(build_signal(strategy.strategy_id, tick, intent, tick_event_id))
        return signals

    def _keep_unsent(self, key: str, signals: list[TradingSignal]) -> None:
        self._unsent[key] = signals
        while len(self._unsent) > MAX_UNSENT:
            dropped, lost = self._unsent.popitem(last=False)
            logger.warning(
                "%s: dropping %d unsent signal(s) of tick %s", SERVICE_NAME, len(lost), dropped
            )
