"""The trading engine: validated signals become orders on each routed namespace's trader.

Two flows: the validated signals of ``broker_namespace``, and the market ticks.
Handlers are plain business logic; what they publish goes through an
:class:`~services.trading_engine.outbox.Outbox` (sent in order, dropped only once
acknowledged), so they can be tested with a dict and a fake publisher.

Publishing rules:

* a signal refused by the engine (market closed, or one of its own limits:
  quantity, price band, notional): one ``REJECTED_SIGNAL``
  (``stage="trading_engine"``, the reason) on ``signals_rejected()``, keyed by
  strategy id; counted by reason kind, market-closed ones also logged (at most
  once a minute, with the count);
* an order the trader accepted, resting or filled at once: one ``ORDER_PLACED`` on
  ``TopicMap(ns).orders()``;
* a fill, at placement or later on a tick: one ``ORDER_FILLED`` on
  ``executions()``, after the order's ``ORDER_PLACED``;
* an order the trader refused (no price, stale price, too many resting):
  one ``ORDER_REJECTED`` on ``executions()``; a resting order that expired: one
  ``ORDER_CANCELLED`` there.

Order events are keyed by client order id (derived from signal id and
namespace), carry the trader's ledger ``sequence``, and stay in the correlation
chain of the signal that created the order. A value on either topic that is not
an envelope of the expected type is dead-lettered with the reason.

Durable state: the orders and executions topics are the ledger. :meth:`start`
rebuilds every routed namespace's books, resting orders and recent order ids
from them (and the engine's recent decisions and the last prices from
``signals.rejected`` and ``market.ticks``) before it consumes anything.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderStatus,
    TradingSignal,
    utc_now,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import Redis
from core.streaming.correlation import CorrelationContext
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from services.common.envelopes import require_event
from services.common.history import restoring
from services.common.rate_limited_log import RateLimitedLog
from services.trading_engine.engine_state import EngineState, PositionRow
from services.trading_engine.limits import EngineLimits
from services.trading_engine.market_hours import MarketStatus
from services.trading_engine.metrics import EngineMetrics
from services.trading_engine.order_events import EngineStats, OrderEvents
from services.trading_engine.orders import OrderRequest
from services.trading_engine.outbox import Outbox, Publisher
from services.trading_engine.placements import PendingPlacements
from services.trading_engine.restore import Quote
from services.trading_engine.trader_factory import Trader, TraderFactory

logger = logging.getLogger(__name__)

SERVICE_NAME = "trading_engine"
_EXECUTED = "executed"
_REJECTED = "rejected"

__all__ = [
    "SERVICE_NAME",
    "EngineSnapshot",
    "EngineStats",
    "PositionRow",
    "Quote",
    "Trader",
    "TradingEngineService",
]


class MarketHours(Protocol):
    """Whether the market is open now (``MarketHoursChecker`` has this shape)."""

    def status(self, at: datetime | None = None) -> MarketStatus: ...


class Router(Protocol):
    """Which namespaces execute a strategy's signals (``ExecutionRouter``'s shape)."""

    async def get_target_namespaces(self, strategy_id: str) -> list[str]: ...


@dataclass(frozen=True)
class EngineSnapshot:
    """Read model for displays: counters, prices, P&L and positions.

    ``pnl_by_strategy`` sums each strategy over every trader; a book that cannot
    be valued (an open position without a mark) shows NaN rather than a guess.
    ``resting_orders`` counts orders resting on the traders.
    """

    stats: dict[str, int]
    last_prices: dict[int, float]
    pnl_by_strategy: dict[str, float]
    pnl_by_namespace: dict[str, dict[str, float]]
    resting_orders: int
    positions: list[PositionRow]


class TradingEngineService(EngineState):
    """Executes validated signals on paper traders and publishes order events."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        redis_client: Redis | None,
        trader_factory: TraderFactory,
        execution_router: Router,
        market_hours_checker: MarketHours,
        *,
        clock: Callable[[], datetime] | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        super().__init__(settings, trader_factory, clock or utc_now)
        self.execution_router = execution_router
        self.market_hours_checker = market_hours_checker
        self.topics = TopicMap(settings.broker_namespace)
        self.stats = EngineStats()
        self.limits = EngineLimits.from_settings(settings)
        self.metrics = EngineMetrics(SERVICE_NAME)
        self.metrics.watch_books(self)
        self._decisions: OrderedDict[str, str] = OrderedDict()
        self._closed_log = RateLimitedLog(logger)
        self._folded_since_snapshot = 0

        prefix = settings.redpanda.group_id_prefix
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .with_redis(redis_client)
            # Orders and executions commit with the input offsets, one transaction per
            # input partition; a resting order is filled by a tick only once the
            # signal that placed it is committed (PendingPlacements).
            .with_reliability_defaults(processing_guarantee="exactly_once")
            .add_producer(topics=self._produced_topics())
            .add_consumer_handler(
                [self.topics.signals_validated()],
                f"{prefix}.{SERVICE_NAME}.signals",
                self._handle_validated_signal,
            )
            .add_consumer_handler(
                [TopicNames.MARKET_TICKS],
                f"{prefix}.{SERVICE_NAME}.ticks",
                self._handle_market_tick,
            )
            .build()
        )
        self.orchestrator.add_metrics_registry(self.metrics.registry)
        signals = self.orchestrator.flows[0]
        self._placements = PendingPlacements(
            signals.consumer.committed_offset if signals.transactions is not None else None
        )
        self._outbox = Outbox(
            publisher if publisher is not None else self.orchestrator.producer, self.note_ack
        )
        self._sent_at_snapshot = 0
        self.events = OrderEvents(
            self._outbox,
            self.topics,
            self.stats,
            self.metrics,
            self._order_correlation,
            self._clock,
        )

    @property
    def publisher(self) -> Publisher:
        """Where the engine's events go (the service's producer unless one was given)."""
        return self._outbox.publisher

    @publisher.setter
    def publisher(self, value: Publisher) -> None:
        self._outbox.publisher = value

    # ------------------------------------------------------------------ lifecycle

    def _produced_topics(self) -> list[str]:
        """Rejections of this namespace, orders and executions of every routed one."""
        topics = [self.topics.signals_rejected()]
        for namespace in self.namespaces:
            routed = TopicMap(namespace)
            topics.extend([routed.orders(), routed.executions()])
        return topics

    async def start(self) -> None:
        """Make the traders available, rebuild the books from the ledger, then consume."""
        await self.trader_factory.initialize()
        try:
            if self.settings.trading.restore_on_start:
                # A commit of a killed instance that lands after the ledger is read
                # would be missing from the books: finish those commits first.
                await restoring(
                    "finishing an earlier instance's transactions",
                    self.settings,
                    self.orchestrator.fence_previous_owners,
                )
                await restoring("rebuilding the books from the ledger", self.settings, self.restore)
                await self._expire_resting()
                if self._folded_since_snapshot >= self.settings.trading.snapshot_every > 0:
                    await self._snapshot()
            await self.orchestrator.start()
        except BaseException:
            await self.trader_factory.shutdown()
            raise

    async def stop(self) -> None:
        """Drain and stop consuming, log the books left, then release the traders."""
        try:
            await self.orchestrator.stop()
        finally:
            if self._outbox:
                logger.warning(
                    "%s: %d order event(s) could not be published before stop",
                    SERVICE_NAME,
                    len(self._outbox),
                )
            self.log_final_state()
            await self.trader_factory.shutdown()

    # ------------------------------------------------------------------ handlers

    async def _handle_validated_signal(self, message: dict[str, Any]) -> None:
        """Execute a validated signal on every routed namespace, or reject it."""
        data = require_event(
            message, EventType.VALIDATED_SIGNAL.value, self.topics.signals_validated()
        )
        signal = TradingSignal.model_validate(data.get("original_signal"))
        decision = self._decision(signal.signal_id)
        if decision is None:
            decision = self._decide(signal)
            self._remember(signal.signal_id, decision)
        if decision == _EXECUTED:
            for namespace in await self.execution_router.get_target_namespaces(signal.strategy_id):
                await self._execute_on_trader(signal, namespace)
        await self._flush()
        self.stats.signals_handled += 1

    def _decide(self, signal: TradingSignal) -> str:
        """Execute, or queue a rejection: market closed, or one of the engine's limits."""
        status = self.market_hours_checker.status()
        if not status.is_open:
            self.events.reject_signal(signal, f"market closed: {status.reason}", "market_closed")
            self._closed_log.warning(
                "market_closed",
                "%s: signal %s of %s rejected: market closed (%s); "
                "TRADESTREAM_TRADING__MARKET_ALWAYS_OPEN=true forces it open",
                SERVICE_NAME,
                signal.signal_id,
                signal.strategy_id,
                status.reason,
            )
            return _REJECTED
        quote = self.quote(signal.instrument_token)
        breach = self.limits.check(signal, quote.price if quote is not None else None)
        if breach is not None:
            self.events.reject_signal(signal, breach.reason, breach.kind)
            return _REJECTED
        return _EXECUTED

    async def _handle_market_tick(self, message: dict[str, Any]) -> None:
        """Record the price, fill the resting orders it crosses, expire the old ones."""
        data = require_event(message, EventType.MARKET_TICK.value, TopicNames.MARKET_TICKS)
        tick = MarketTick.model_validate(data)
        at = tick.timestamp if data.get("timestamp") is not None else self._clock()
        token = tick.instrument_token
        self.symbols[token] = tick.symbol
        known_at = self.price_times.get(token)
        if known_at is not None and at < known_at:
            self.stats.out_of_order_ticks += 1
        else:
            self.last_prices[token] = tick.last_price
            self.price_times[token] = at
            causation_id = CorrelationContext.get_causation_id()
            for trader in list(self._traders.values()):
                for fill in trader.on_tick(token, tick.last_price, self._placements.is_committed):
                    self.events.record_fill(fill, causation_id)
            self.stats.ticks_handled += 1
        await self._expire_resting()

    async def _execute_on_trader(self, signal: TradingSignal, namespace: str) -> None:
        """Place ``signal``'s order on ``namespace``'s trader and queue its events.

        The client order id is derived from signal id and namespace, so a repeat
        finds the order already placed and queues nothing new.
        """
        request = OrderRequest.from_signal(signal, namespace)
        trader = self.trader(namespace)
        self._strategies.setdefault(namespace, set()).add(signal.strategy_id)
        self.symbols.setdefault(signal.instrument_token, signal.symbol)
        quote = self.quote(signal.instrument_token)
        result = await trader.place_order(
            request,
            quote.price if quote is not None else None,
            quote.at if quote is not None else None,
        )
        if result.duplicate:
            self.stats.duplicate_orders += 1
            return
        if result.status is OrderStatus.PLACED:
            self._placements.note(request.client_order_id)  # resting: filled by a later tick
        self.metrics.signal_to_order.observe((self._clock() - signal.timestamp).total_seconds())
        self.events.record_placement(result, CorrelationContext.get_correlation_id())

    async def _expire_resting(self) -> None:
        """Cancel resting orders past their lifetime, with an ``order.cancelled`` each."""
        eligible = self._placements.is_committed
        expired = [
            r for trader in self._traders.values() for r in trader.expire(self._clock(), eligible)
        ]
        for result in expired:
            self.events.record_cancel(result)
        await self._flush()

    async def _flush(self) -> None:
        """Publish what is queued; then, every ``SNAPSHOT_EVERY`` ledger events, a snapshot."""
        if self._outbox:
            await self._outbox.flush()
        every = self.settings.trading.snapshot_every
        if (
            every
            and not self._outbox
            and self._outbox.sent - self._sent_at_snapshot >= every
            # Under exactly-once a snapshot must not describe another partition's
            # uncommitted fills (an abort would leave them in the snapshot only);
            # it rides in this handler's transaction, so its own records are fine.
            and not self.orchestrator.uncommitted_elsewhere()
        ):
            await self._snapshot()

    async def _snapshot(self) -> None:
        self._sent_at_snapshot = self._outbox.sent
        await self.write_snapshots(self.publisher)

    # ------------------------------------------------------------------ read model

    @property
    def pending_events(self) -> int:
        """Events queued but not yet acknowledged by the broker."""
        return len(self._outbox)

    def snapshot(self) -> EngineSnapshot:
        """Counters, last prices, P&L per strategy and the position rows."""
        marks = dict(self.last_prices)
        by_namespace: dict[str, dict[str, float]] = {}
        by_strategy: dict[str, float] = {}
        for view in self.book_views():
            try:
                value = view.book.marked_pnl(view.starting_cash, marks)
            except KeyError:
                value = math.nan
            by_namespace.setdefault(view.namespace, {})[view.strategy_id] = value
            by_strategy[view.strategy_id] = by_strategy.get(view.strategy_id, 0.0) + value
        return EngineSnapshot(
            stats=asdict(self.stats),
            last_prices=marks,
            pnl_by_strategy=by_strategy,
            pnl_by_namespace=by_namespace,
            resting_orders=sum(self.resting_counts().values()),
            positions=self.position_rows(),
        )

    # ------------------------------------------------------------------ decisions

    def _decision(self, signal_id: str) -> str | None:
        """What was decided for ``signal_id`` before, if it is still remembered."""
        decision = self._decisions.get(signal_id)
        if decision is not None:
            self._decisions.move_to_end(signal_id)
        return decision

    def _remember(self, signal_id: str, decision: str) -> None:
        self._decisions[signal_id] = decision
        self._decisions.move_to_end(signal_id)
        while len(self._decisions) > self.settings.trading.remembered_ids:
            self._decisions.popitem(last=False)

    def _restore_decisions(self, executed: Iterable[str], rejected: Iterable[str]) -> None:
        for signal_id in rejected:
            self._remember(signal_id, _REJECTED)
        for signal_id in executed:
            self._remember(signal_id, _EXECUTED)

    # ------------------------------------------------------------------ restore

    async def restore(self) -> None:
        """Rebuild books, resting orders, recent ids, decisions and prices from the topics."""
        started = time.monotonic()
        history = await self._read_history()
        executed: list[str] = []
        self._folded_since_snapshot = 0
        for namespace, state in history.ledger.states.items():
            self.adopt_ledger(namespace, state)
            executed.extend(state.executed_signals)
            self._folded_since_snapshot += state.events
        self.ledger_ends = dict(history.ends)
        self._restore_decisions(executed, history.rejected_signal_ids)
        for token, quote in history.quotes.items():
            self.symbols[token] = quote.symbol or self.symbols.get(token, str(token))
            self.last_prices[token] = quote.price
            self.price_times[token] = quote.at
        self.log_restored(history, time.monotonic() - started)
