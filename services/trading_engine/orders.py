"""Orders as the trading engine hands them to a trader, and what comes back."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from core.schemas.events import OrderEvent, OrderStatus, OrderType, SignalAction, TradingSignal
from core.streaming.topic_names import validate_topic_name

CLIENT_ORDER_ID_NAMESPACE = uuid.UUID("6f1d8e52-3c4b-5a7e-9f20-7b1c2d3e4f50")
"""Fixed UUIDv5 namespace of client order ids; changing it changes every id."""


def client_order_id(signal_id: str, namespace: str) -> str:
    """The order id of ``signal_id`` on ``namespace``: the same inputs, the same id.

    A redelivered signal therefore maps to the order already placed and a trader
    can refuse to place it twice. Namespaces are legal topic names, which never
    contain ``:``, so distinct (signal, namespace) pairs never share an id input.
    """
    if not signal_id:
        raise ValueError("signal_id is empty")
    validate_topic_name(namespace)
    return str(uuid.uuid5(CLIENT_ORDER_ID_NAMESPACE, f"{signal_id}:{namespace}"))


@dataclass(frozen=True)
class OrderRequest:
    """One order for one trader. ``limit_price`` is used only by LIMIT orders."""

    client_order_id: str
    signal_id: str
    strategy_id: str
    instrument_token: int
    symbol: str
    action: SignalAction
    quantity: int
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None

    def __post_init__(self) -> None:
        if not self.client_order_id:
            raise ValueError("client_order_id is empty")
        if not self.strategy_id:
            raise ValueError("strategy_id is empty")
        if self.quantity <= 0:
            raise ValueError(f"quantity must be positive, got {self.quantity}")
        if self.order_type is OrderType.LIMIT:
            if self.limit_price is None:
                raise ValueError("a LIMIT order needs a limit_price")
            if not math.isfinite(self.limit_price) or self.limit_price < 0:
                raise ValueError(f"limit_price must be finite and >= 0, got {self.limit_price}")

    @classmethod
    def from_signal(cls, signal: TradingSignal, namespace: str) -> OrderRequest:
        """The order ``signal`` becomes on ``namespace``, with its deterministic id."""
        return cls(
            client_order_id=client_order_id(signal.signal_id, namespace),
            signal_id=signal.signal_id,
            strategy_id=signal.strategy_id,
            instrument_token=signal.instrument_token,
            symbol=signal.symbol,
            action=signal.action,
            quantity=signal.quantity,
            order_type=signal.order_type,
            limit_price=signal.price if signal.order_type is OrderType.LIMIT else None,
        )

    @property
    def signed_quantity(self) -> int:
        """Quantity with its direction: positive buys, negative sells."""
        return self.quantity if self.action is SignalAction.BUY else -self.quantity


@dataclass(frozen=True)
class OrderResult:
    """An order's state on a trader.

    PLACED means resting (a LIMIT order not yet crossed), FILLED carries the
    fill price, REJECTED and CANCELLED the reason. ``duplicate`` is True when the
    trader had already seen this client order id and returned its recorded state
    without trading. ``sequence`` is the trader's ledger number of this state;
    an order filled at once also has ``placed_sequence`` for its placement.
    ``placed_at`` is when the order was accepted (None for a rejection).
    """

    request: OrderRequest
    namespace: str
    status: OrderStatus
    fill_price: float | None = None
    reason: str | None = None
    duplicate: bool = False
    sequence: int | None = None
    placed_sequence: int | None = None
    placed_at: datetime | None = None

    @property
    def client_order_id(self) -> str:
        """The order's idempotency key."""
        return self.request.client_order_id

    def to_event(self, *, placement: bool = False) -> OrderEvent:
        """The order event to publish for this state (``placement``: its PLACED event)."""
        req = self.request
        status = OrderStatus.PLACED if placement else self.status
        sequence = self.sequence
        if placement and self.placed_sequence is not None:
            sequence = self.placed_sequence
        return OrderEvent(
            client_order_id=req.client_order_id,
            signal_id=req.signal_id,
            strategy_id=req.strategy_id,
            namespace=self.namespace,
            instrument_token=req.instrument_token,
            symbol=req.symbol,
            action=req.action,
            quantity=req.quantity,
            order_type=req.order_type,
            limit_price=req.limit_price,
            status=status,
            fill_price=None if placement else self.fill_price,
            reason=None if placement and self.status is not OrderStatus.PLACED else self.reason,
            sequence=sequence,
            placed_at=self.placed_at,
        )
