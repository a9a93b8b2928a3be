"""The trading engine: validated signals become orders on each routed namespace's trader.

The service is composed with :class:`StreamServiceBuilder`: one flow consumes the
validated signals of ``broker_namespace``, another the market ticks. Handlers are
plain business logic; everything they publish goes through ``publisher`` (the
orchestrator's producer by default), so they can be tested with a dict and a fake.

Publishing rules:

* a signal that arrives while the market is closed: one ``REJECTED_SIGNAL``
  (``stage="trading_engine"``, the market status as the reason) on
  ``TopicMap(broker_namespace).signals_rejected()``, keyed by strategy id;
* an order the trader accepted, resting or filled at once: one ``ORDER_PLACED`` on
  ``TopicMap(ns).orders()``;
* a fill, at placement or later on a tick: one ``ORDER_FILLED`` on
  ``TopicMap(ns).executions()``, always after the order's ``ORDER_PLACED``;
* an order the trader refused (no price, stale price, ...): one ``ORDER_REJECTED``
  on ``executions()`` and no ``ORDER_PLACED``.

Order events are keyed by client order id, which is derived from signal id and
namespace, so a redelivered signal maps to the order already placed: the trader
reports it as a duplicate and nothing new is published, with or without dedup.
Every order event carries the correlation id of the signal that created the order,
fills triggered by a tick included (their causation id is the tick's event id).
The decision on a signal id (rejected as closed, or executed) is remembered, so a
redelivered signal never gets a second, different outcome when the market opened
or closed in between; a repeat of an executed one re-runs the (idempotent)
execution, which completes namespaces a failed attempt did not reach.

Events leave through an outbox: they are queued in order and dropped from the
queue only once the broker acknowledged them. A failed send stays queued and goes
out with the retry of the message (or with the next message), which matters
because the retried signal itself finds its order already placed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderStatus,
    RejectedSignal,
    TradingSignal,
    utc_now,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import Redis
from core.streaming.correlation import CorrelationContext
from core.streaming.infrastructure.message_producer import Payload
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from services.trading_engine.market_hours import MarketStatus
from services.trading_engine.orders import OrderRequest, OrderResult
from services.trading_engine.trader_factory import Trader, TraderFactory

logger = logging.getLogger(__name__)

SERVICE_NAME = "trading_engine"
STAGE: Final = "trading_engine"
MAX_REMEMBERED_SIGNALS = 100_000
_EXECUTED = "executed"
_REJECTED = "rejected"


class Publisher(Protocol):
    """Where handlers publish events: ``MessageProducer.send`` has this shape."""

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        data: Payload,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
        *,
        causation_id: str | None = None,
    ) -> str: ...


class MarketHours(Protocol):
    """Whether the market is open now (``MarketHoursChecker`` has this shape)."""

    def status(self, at: datetime | None = None) -> MarketStatus: ...


class Router(Protocol):
    """Which namespaces execute a strategy's signals (``ExecutionRouter``'s shape)."""

    async def get_target_namespaces(self, strategy_id: str) -> list[str]: ...


@runtime_checkable
class Bookkeeper(Protocol):
    """A trader that can value a strategy's book (``PaperTrader`` is one)."""

    def pnl(self, strategy_id: str, marks: Mapping[int, float]) -> float: ...


@dataclass(frozen=True, slots=True)
class Quote:
    """The last price of an instrument and when it traded."""

    price: float
    at: datetime


@dataclass
class EngineStats:
    """Counters of what the engine did; duplicates are counted apart."""

    signals_handled: int = 0
    signals_rejected: int = 0
    orders_placed: int = 0
    orders_filled: int = 0
    orders_rejected: int = 0
    duplicate_orders: int = 0
    ticks_handled: int = 0
    out_of_order_ticks: int = 0
    events_ignored: int = 0


@dataclass(frozen=True)
class EngineSnapshot:
    """Read model for displays: counters, prices and mark-to-market P&L.

    ``pnl_by_strategy`` sums each strategy over every trader; a book that cannot
    be valued (an open position without a mark) shows NaN rather than a guess.
    ``resting_orders`` counts orders this engine placed that have not filled yet.
    """

    stats: dict[str, int]
    last_prices: dict[int, float]
    pnl_by_strategy: dict[str, float]
    pnl_by_namespace: dict[str, dict[str, float]]
    resting_orders: int


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    key: str
    payload: BaseModel
    event_type: EventType
    correlation_id: str | None
    causation_id: str | None


@dataclass
class _Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.signals_rejected = Counter(
            "tradestream_trading_signals_rejected_total",
            "Signals the trading engine refused, by reason kind.",
            ("service", "reason"),
            registry=self.registry,
        )
        self.orders = Counter(
            "tradestream_trading_orders_total",
            "Order outcomes on traders, by namespace and status.",
            ("service", "namespace", "status"),
            registry=self.registry,
        )


class TradingEngineService:
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
        self.settings = settings
        self.trader_factory = trader_factory
        self.execution_router = execution_router
        self.market_hours_checker = market_hours_checker
        self._clock = clock or utc_now
        self.topics = TopicMap(settings.broker_namespace)
        self.stats = EngineStats()
        self.last_prices: dict[int, float] = {}
        self.price_times: dict[int, datetime] = {}
        self._traders: dict[str, Trader] = {}
        self._strategies: dict[str, set[str]] = {}
        self._order_correlation: dict[str, str | None] = {}
        self._decisions: OrderedDict[str, str] = OrderedDict()
        self._outbox: deque[_Outgoing] = deque()
        self._send_lock = asyncio.Lock()
        self._metrics = _Metrics()

        prefix = settings.redpanda.group_id_prefix
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .with_redis(redis_client)
            # Verdicts / orders and executions commit with the input offsets, in one transaction.
            .with_reliability_defaults(processing_guarantee="exactly_once")
            .add_producer(topics=self._produced_topics(settings))
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
        self.orchestrator.add_metrics_registry(self._metrics.registry)
        self.publisher: Publisher = (
            publisher if publisher is not None else self.orchestrator.producer
        )

    # ------------------------------------------------------------------ lifecycle

    def _produced_topics(self, settings: Settings) -> list[str]:
        """Rejections of this namespace, orders and executions of every routed one."""
        namespaces = {settings.broker_namespace}
        for targets in settings.trading.strategy_routes.values():
            namespaces.update(targets)
        topics = [self.topics.signals_rejected()]
        for namespace in sorted(namespaces):
            routed = TopicMap(namespace)
            topics.extend([routed.orders(), routed.executions()])
        return topics

    async def start(self) -> None:
        """Make the traders available, then start consuming."""
        await self.trader_factory.initialize()
        try:
            await self.orchestrator.start()
        except BaseException:
            await self.trader_factory.shutdown()
            raise

    async def stop(self) -> None:
        """Drain and stop consuming, then release the traders."""
        try:
            await self.orchestrator.stop()
        finally:
            if self._outbox:
                logger.warning(
                    "%s: %d order event(s) could not be published before stop",
                    SERVICE_NAME,
                    len(self._outbox),
                )
            await self.trader_factory.shutdown()

    # ------------------------------------------------------------------ handlers

    async def _handle_validated_signal(self, message: dict[str, Any]) -> None:
        """Execute a validated signal on every routed namespace, or reject it if closed."""
        if message.get("type") != EventType.VALIDATED_SIGNAL:
            self.stats.events_ignored += 1
            return
        data = message.get("data")
        original = data.get("original_signal") if isinstance(data, dict) else None
        signal = TradingSignal.model_validate(original)
        decision = self._decision(signal.signal_id)
        if decision is None:
            status = self.market_hours_checker.status()
            decision = _EXECUTED if status.is_open else _REJECTED
            self._remember(signal.signal_id, decision)
            if decision == _REJECTED:
                self._reject_signal(signal, f"market closed: {status.reason}")
        if decision == _EXECUTED:
            for namespace in await self.execution_router.get_target_namespaces(signal.strategy_id):
                await self._execute_on_trader(signal, namespace)
        await self._flush()
        self.stats.signals_handled += 1

    async def _handle_market_tick(self, message: dict[str, Any]) -> None:
        """Record the price and let every trader fill the resting orders it crosses."""
        if message.get("type") != EventType.MARKET_TICK:
            self.stats.events_ignored += 1
            return
        data = message.get("data")
        tick = MarketTick.model_validate(data)
        stamped = isinstance(data, dict) and data.get("timestamp") is not None
        at = tick.timestamp if stamped else self._clock()
        token = tick.instrument_token
        known_at = self.price_times.get(token)
        if known_at is not None and at < known_at:
            self.stats.out_of_order_ticks += 1
            await self._flush()
            return
        self.last_prices[token] = tick.last_price
        self.price_times[token] = at
        causation_id = CorrelationContext.get_causation_id()
        for trader in list(self._traders.values()):
            for fill in trader.on_tick(token, tick.last_price):
                self._record_fill(fill, causation_id)
        await self._flush()
        self.stats.ticks_handled += 1

    async def _execute_on_trader(self, signal: TradingSignal, namespace: str) -> None:
        """Place ``signal``'s order on ``namespace``'s trader and queue its events.

        The client order id is derived from signal id and namespace, so a repeat
        finds the order already placed and queues nothing new.
        """
        request = OrderRequest.from_signal(signal, namespace)
        trader = self.trader_factory.get_trader(namespace)
        self._traders.setdefault(namespace, trader)
        self._strategies.setdefault(namespace, set()).add(signal.strategy_id)
        quote = self.quote(signal.instrument_token)
        oid = request.client_order_id
        fresh = oid not in self._order_correlation
        if fresh:
            self._order_correlation[oid] = CorrelationContext.get_correlation_id()
        try:
            result = await trader.place_order(
                request,
                quote.price if quote is not None else None,
                quote.at if quote is not None else None,
            )
        except BaseException:
            if fresh:
                self._order_correlation.pop(oid, None)
            raise
        if result.duplicate:
            self.stats.duplicate_orders += 1
            if fresh:
                self._order_correlation.pop(oid, None)
            return
        self._record_placement(result)

    # ------------------------------------------------------------------ read model

    def quote(self, instrument_token: int) -> Quote | None:
        """The last price of ``instrument_token`` and its time, if one was seen."""
        if instrument_token not in self.last_prices:
            return None
        return Quote(self.last_prices[instrument_token], self.price_times[instrument_token])

    def traders(self) -> dict[str, Trader]:
        """The traders this engine has placed orders on, by namespace."""
        return dict(self._traders)

    @property
    def pending_events(self) -> int:
        """Events queued but not yet acknowledged by the broker."""
        return len(self._outbox)

    def snapshot(self) -> EngineSnapshot:
        """Counters, last prices and P&L per strategy (marks are the last prices)."""
        marks = dict(self.last_prices)
        by_namespace: dict[str, dict[str, float]] = {}
        by_strategy: dict[str, float] = {}
        for namespace, trader in self._traders.items():
            if not isinstance(trader, Bookkeeper):
                continue
            books = by_namespace.setdefault(namespace, {})
            for strategy_id in sorted(self._strategies.get(namespace, ())):
                try:
                    value = trader.pnl(strategy_id, marks)
                except KeyError:
                    value = math.nan
                books[strategy_id] = value
                by_strategy[strategy_id] = by_strategy.get(strategy_id, 0.0) + value
        return EngineSnapshot(
            stats=asdict(self.stats),
            last_prices=marks,
            pnl_by_strategy=by_strategy,
            pnl_by_namespace=by_namespace,
            resting_orders=len(self._order_correlation),
        )

    # ------------------------------------------------------------------ publishing

    def _decision(self, signal_id: str) -> str | None:
        """What was decided for ``signal_id`` before, if it is still remembered."""
        decision = self._decisions.get(signal_id)
        if decision is not None:
            self._decisions.move_to_end(signal_id)
        return decision

    def _remember(self, signal_id: str, decision: str) -> None:
        self._decisions[signal_id] = decision
        while len(self._decisions) > MAX_REMEMBERED_SIGNALS:
            self._decisions.popitem(last=False)

    def _reject_signal(self, signal: TradingSignal, reason: str) -> None:
        """Queue the rejection of a signal refused because the market is closed."""
        rejection = RejectedSignal(
            signal_id=signal.signal_id,
            strategy_id=signal.strategy_id,
            stage=STAGE,
            reason=reason,
            original_signal=signal.model_dump(mode="json"),
        )
        self._enqueue(
            self.topics.signals_rejected(),
            signal.strategy_id,
            rejection,
            EventType.REJECTED_SIGNAL,
            CorrelationContext.get_correlation_id(),
            CorrelationContext.get_causation_id(),
        )
        self.stats.signals_rejected += 1
        self._metrics.signals_rejected.labels(SERVICE_NAME, "market_closed").inc()

    def _record_placement(self, result: OrderResult) -> None:
        """Queue the events of a new order's first state."""
        oid = result.client_order_id
        topics = TopicMap(result.namespace)
        correlation_id = self._order_correlation.get(oid)
        causation_id = CorrelationContext.get_causation_id()
        self._count(result)
        if result.status is OrderStatus.REJECTED:
            self._order_correlation.pop(oid, None)
            self._enqueue(
                topics.executions(),
                oid,
                result.to_event(),
                EventType.ORDER_REJECTED,
                correlation_id,
                causation_id,
            )
            return
        placed = replace(result, status=OrderStatus.PLACED, fill_price=None)
        self._enqueue(
            topics.orders(),
            oid,
            placed.to_event(),
            EventType.ORDER_PLACED,
            correlation_id,
            causation_id,
        )
        if result.status is OrderStatus.FILLED:
            self._record_fill(result, causation_id)

    def _record_fill(self, fill: OrderResult, causation_id: str | None) -> None:
        """Queue an ``ORDER_FILLED`` in the chain of the signal that made the order."""
        if fill.status is not OrderStatus.FILLED:
            return
        oid = fill.client_order_id
        correlation_id = self._order_correlation.pop(oid, None)
        self.stats.orders_filled += 1
        self._metrics.orders.labels(SERVICE_NAME, fill.namespace, "FILLED").inc()
        self._enqueue(
            TopicMap(fill.namespace).executions(),
            oid,
            fill.to_event(),
            EventType.ORDER_FILLED,
            correlation_id,
            causation_id,
        )

    def _count(self, result: OrderResult) -> None:
        if result.status is OrderStatus.REJECTED:
            self.stats.orders_rejected += 1
            self._metrics.orders.labels(SERVICE_NAME, result.namespace, "REJECTED").inc()
        else:
            self.stats.orders_placed += 1
            self._metrics.orders.labels(SERVICE_NAME, result.namespace, "PLACED").inc()

    def _enqueue(
        self,
        topic: str,
        key: str,
        payload: BaseModel,
        event_type: EventType,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> None:
        self._outbox.append(
            _Outgoing(topic, key, payload, event_type, correlation_id, causation_id)
        )

    async def _flush(self) -> None:
        """Send queued events in order; each leaves the queue once acknowledged."""
        async with self._send_lock:
            while self._outbox:
                item = self._outbox[0]
                await self.publisher.send(
                    item.topic,
                    item.key,
                    item.payload,
                    item.event_type,
                    item.correlation_id,
                    causation_id=item.causation_id,
                )
                self._outbox.popleft()
