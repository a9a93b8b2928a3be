"""The plan's trading engine in both shapes, for the migration tests.

``TradingEngine(StreamProcessor)`` is the old shape: one base class, one consumer
group over the validated signals and the ticks, ``process_message(topic,
message)`` dispatching on the topic, the inherited ``self.producer``.
``TradingEngineService`` is the same engine made with the builder: one flow over
the same topics in the same group, so a switch between the two continues from
the other's committed offsets. Both take their handlers from
:class:`EngineHandlers`, so comparing their outputs compares the two framework
paths, not two copies of business code.

Business rules, adapted to ``core.schemas.events``: a tick (a price or token of 0
is a value) sets the instrument's last price; a validated signal places an order
(``ORDER_PLACED`` on ``<namespace>.orders``, keyed by ``<signal id>@<namespace>``) on every
namespace its strategy is routed to, or, with no price to fill it at, an
``ORDER_REJECTED`` on ``<namespace>.executions``; a signal timed outside market
hours is refused with a ``REJECTED_SIGNAL`` on ``signals.rejected``. A malformed
signal raises pydantic's ``ValidationError`` (dead-lettered at once); a router
that cannot be reached raises ``ConnectionError`` (retried).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import (
    EventType,
    MarketTick,
    OrderEvent,
    OrderStatus,
    OrderType,
    RejectedSignal,
    TradingSignal,
    ValidatedSignal,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import Redis
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.legacy import StreamProcessor
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

SERVICE_NAME = "trading_engine"
IST = ZoneInfo("Asia/Kolkata")


def group_id(settings: Settings) -> str:
    """The engine's one consumer group, the same in both shapes."""
    return f"{settings.redpanda.group_id_prefix}.{SERVICE_NAME}"


class WeekdayHours:
    """NSE hours without holidays: 09:15-15:30 Asia/Kolkata, Monday to Friday."""

    def is_market_open(self, at: datetime) -> bool:
        local = at.astimezone(IST)
        return local.weekday() < 5 and time(9, 15) <= local.time() < time(15, 30)


class Router:
    """Routes every strategy to the given namespaces.

    Strategies in ``unreachable_once`` raise ``ConnectionError`` on their first
    lookup, as a routing service that is briefly away would. ``delay_s`` slows
    every lookup, so a test can stop a service with messages still queued.
    """

    def __init__(
        self,
        namespaces: list[str],
        *,
        unreachable_once: set[str] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.namespaces = namespaces
        self.unreachable = set(unreachable_once or ())
        self.delay_s = delay_s
        self.lookups = 0

    async def get_target_namespaces(self, strategy_id: str) -> list[str]:
        self.lookups += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if strategy_id in self.unreachable:
            self.unreachable.discard(strategy_id)
            raise ConnectionError(f"router unreachable for {strategy_id}")
        return list(self.namespaces)


class EngineHandlers:
    """The engine's business logic; needs ``producer``, a router, market hours, topics."""

    producer: MessageProducer
    execution_router: Router
    market_hours_checker: WeekdayHours
    topic_map: TopicMap

    def _init_state(self) -> None:
        self.last_prices: dict[int, float] = {}
        self.signals_handled: list[str] = []
        self.ignored = 0

    async def _handle_validated_signal(self, message: dict[str, Any]) -> None:
        if message.get("type") != EventType.VALIDATED_SIGNAL:
            self.ignored += 1
            return
        signal = ValidatedSignal.model_validate(message.get("data")).original_signal
        self.signals_handled.append(signal.signal_id)
        if not self.market_hours_checker.is_market_open(signal.timestamp):
            rejection = RejectedSignal(
                signal_id=signal.signal_id,
                strategy_id=signal.strategy_id,
                stage="trading_engine",
                reason="market closed",
                original_signal=signal.model_dump(mode="json"),
            )
            await self.producer.send(
                self.topic_map.signals_rejected(),
                signal.strategy_id,
                rejection,
                EventType.REJECTED_SIGNAL,
            )
            return
        for namespace in await self.execution_router.get_target_namespaces(signal.strategy_id):
            await self._execute_on_trader(signal, namespace)

    async def _handle_market_tick(self, message: dict[str, Any]) -> None:
        if message.get("type") != EventType.MARKET_TICK:
            self.ignored += 1
            return
        tick = MarketTick.model_validate(message.get("data"))
        self.last_prices[tick.instrument_token] = tick.last_price

    async def _execute_on_trader(self, signal: TradingSignal, namespace: str) -> None:
        order_id = f"{signal.signal_id}@{namespace}"
        if signal.order_type is OrderType.LIMIT:
            price = signal.price
        else:
            price = self.last_prices.get(signal.instrument_token)
        topics = TopicMap(namespace)
        order = OrderEvent(
            client_order_id=order_id,
            signal_id=signal.signal_id,
            strategy_id=signal.strategy_id,
            namespace=namespace,
            instrument_token=signal.instrument_token,
            symbol=signal.symbol,
            action=signal.action,
            quantity=signal.quantity,
            order_type=signal.order_type,
            limit_price=signal.price,
            status=OrderStatus.PLACED if price is not None else OrderStatus.REJECTED,
            fill_price=price,
            reason=None if price is not None else f"no price for {signal.symbol}",
        )
        if price is None:
            await self.producer.send(topics.executions(), order_id, order, EventType.ORDER_REJECTED)
        else:
            await self.producer.send(topics.orders(), order_id, order, EventType.ORDER_PLACED)


class TradingEngine(EngineHandlers, StreamProcessor):
    """The old shape, as services were written on the ``StreamProcessor`` base class."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        redis_client: Redis | None,
        execution_router: Router,
        market_hours_checker: WeekdayHours,
        *,
        ticks_topic: str = TopicNames.MARKET_TICKS,
    ) -> None:
        self.topic_map = TopicMap(settings.broker_namespace)
        self.ticks_topic = ticks_topic
        super().__init__(
            service_name=SERVICE_NAME,
            topics=[self.topic_map.signals_validated(), ticks_topic],
            group_id=group_id(settings),
            config=config,
            settings=settings,
            redis_client=redis_client,
        )
        self.execution_router = execution_router
        self.market_hours_checker = market_hours_checker
        self._init_state()

    async def process_message(self, topic: str, message: dict[str, Any]) -> None:
        if topic == self.ticks_topic:
            await self._handle_market_tick(message)
        else:
            await self._handle_validated_signal(message)


class TradingEngineService(EngineHandlers):
    """The builder shape: the same handlers, group and topics, no base class."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        redis_client: Redis | None,
        execution_router: Router,
        market_hours_checker: WeekdayHours,
        *,
        ticks_topic: str = TopicNames.MARKET_TICKS,
    ) -> None:
        self.topic_map = TopicMap(settings.broker_namespace)
        self.execution_router = execution_router
        self.market_hours_checker = market_hours_checker
        self._init_state()
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .with_redis(redis_client)
            .add_producer()
            .add_consumer_handler(
                [self.topic_map.signals_validated(), ticks_topic], group_id(settings), self.handle
            )
            .build()
        )
        self.producer = self.orchestrator.producer

    async def handle(self, event: dict[str, Any]) -> None:
        """The flow's handler: the envelope's type says which handler it is for."""
        if event.get("type") == EventType.MARKET_TICK:
            await self._handle_market_tick(event)
        else:
            await self._handle_validated_signal(event)

    async def start(self) -> None:
        await self.orchestrator.start()

    async def stop(self) -> None:
        await self.orchestrator.stop()
