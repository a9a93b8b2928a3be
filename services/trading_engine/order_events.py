"""What the engine publishes for each decision and order state, queued in its outbox.

Rules: a signal the engine refuses is one ``signal.rejected`` (stage
``trading_engine``) on ``<ns>.signals.rejected``, keyed by strategy id; an order
the trader accepted is one ``order.placed`` on ``<t>.orders``; a fill, a
rejection by the trader and a cancellation are one ``order.filled``,
``order.rejected`` or ``order.cancelled`` on ``<t>.executions``, after the
order's ``order.placed``. Order events are keyed by client order id and stay in
the correlation chain of the signal that created the order, fills on a later
tick included (their causation id is the tick's event id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from core.schemas.events import EventType, OrderStatus, RejectedSignal, TradingSignal
from core.schemas.topics import TopicMap
from core.streaming.correlation import CorrelationContext
from services.trading_engine.metrics import EngineMetrics
from services.trading_engine.orders import OrderResult
from services.trading_engine.outbox import Outbox

STAGE: Final = "trading_engine"


@dataclass
class EngineStats:
    """Counters of what the engine did; duplicates are counted apart."""

    signals_handled: int = 0
    signals_rejected: int = 0
    orders_placed: int = 0
    orders_filled: int = 0
    orders_rejected: int = 0
    orders_cancelled: int = 0
    duplicate_orders: int = 0
    ticks_handled: int = 0
    out_of_order_ticks: int = 0


class OrderEvents:
    """Turns decisions and order states into queued events, counted and measured."""

    def __init__(
        self,
        outbox: Outbox,
        topics: TopicMap,
        stats: EngineStats,
        metrics: EngineMetrics,
        correlations: dict[str, str | None],
        clock: Callable[[], datetime],
    ) -> None:
        self._outbox = outbox
        self._topics = topics
        self._stats = stats
        self._metrics = metrics
        self._correlations = correlations
        self._clock = clock

    def reject_signal(self, signal: TradingSignal, reason: str, kind: str) -> None:
        """Queue the rejection of a signal the engine refused; ``kind`` labels the metric."""
        rejection = RejectedSignal(
            signal_id=signal.signal_id,
            strategy_id=signal.strategy_id,
            stage=STAGE,
            reason=reason,
            original_signal=signal.model_dump(mode="json"),
        )
        self._outbox.add(
            self._topics.signals_rejected(),
            signal.strategy_id,
            rejection,
            EventType.REJECTED_SIGNAL,
            CorrelationContext.get_correlation_id(),
            CorrelationContext.get_causation_id(),
        )
        self._stats.signals_rejected += 1
        self._metrics.signals_rejected.labels(self._metrics.service, kind).inc()

    def record_placement(self, result: OrderResult, correlation_id: str | None) -> None:
        """Queue the events of a new order's first state."""
        oid = result.client_order_id
        topics = TopicMap(result.namespace)
        causation_id = CorrelationContext.get_causation_id()
        self._count(result)
        if result.status is OrderStatus.REJECTED:
            self._outbox.add(
                topics.executions(),
                oid,
                result.to_event(),
                EventType.ORDER_REJECTED,
                correlation_id,
                causation_id,
            )
            return
        self._correlations[oid] = correlation_id
        self._outbox.add(
            topics.orders(),
            oid,
            result.to_event(placement=True),
            EventType.ORDER_PLACED,
            correlation_id,
            causation_id,
        )
        if result.status is OrderStatus.FILLED:
            self.record_fill(result, causation_id)

    def record_fill(self, fill: OrderResult, causation_id: str | None) -> None:
        """Queue an ``order.filled`` in the chain of the signal that made the order."""
        if fill.status is not OrderStatus.FILLED:
            return
        oid = fill.client_order_id
        self._stats.orders_filled += 1
        self._metrics.orders.labels(self._metrics.service, fill.namespace, "FILLED").inc()
        if fill.placed_at is not None:
            self._metrics.order_to_fill.observe((self._clock() - fill.placed_at).total_seconds())
        self._outbox.add(
            TopicMap(fill.namespace).executions(),
            oid,
            fill.to_event(),
            EventType.ORDER_FILLED,
            self._correlations.pop(oid, None),
            causation_id,
        )

    def record_cancel(self, result: OrderResult) -> None:
        """Queue an ``order.cancelled`` for a resting order that ended without a fill."""
        self._count(result)
        self._outbox.add(
            TopicMap(result.namespace).executions(),
            result.client_order_id,
            result.to_event(),
            EventType.ORDER_CANCELLED,
            self._correlations.pop(result.client_order_id, None),
            CorrelationContext.get_causation_id(),
        )

    def _count(self, result: OrderResult) -> None:
        status = result.status
        if status is OrderStatus.REJECTED:
            self._stats.orders_rejected += 1
        elif status is OrderStatus.CANCELLED:
            self._stats.orders_cancelled += 1
        else:
            self._stats.orders_placed += 1
            status = OrderStatus.PLACED
        self._metrics.orders.labels(self._metrics.service, result.namespace, status.value).inc()
