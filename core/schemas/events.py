"""The event envelope every message travels in, and the trading payloads."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if sys.version_info >= (3, 14):  # pragma: no cover
    _uuid7 = uuid.uuid7
else:
    from uuid_utils.compat import uuid7 as _uuid7


def generate_uuid7() -> str:
    """A new RFC 9562 UUIDv7 as a string: unique and ordered by creation time."""
    return str(_uuid7())


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class EventType(StrEnum):
    """Every event type the trading platform publishes."""

    MARKET_TICK = "market.tick"
    RAW_SIGNAL = "signal.raw"
    VALIDATED_SIGNAL = "signal.validated"
    REJECTED_SIGNAL = "signal.rejected"
    ORDER_PLACED = "order.placed"
    ORDER_FILLED = "order.filled"
    ORDER_REJECTED = "order.rejected"
    ORDER_CANCELLED = "order.cancelled"


class EventEnvelope(BaseModel):
    """Metadata around every payload: identity, time, origin and causality."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=generate_uuid7, min_length=1)
    type: str = Field(min_length=1)
    timestamp: datetime = Field(default_factory=utc_now)
    source: str = Field(min_length=1)
    correlation_id: str | None = None
    causation_id: str | None = None
    schema_version: int = Field(default=1, ge=1)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware")
        return value.astimezone(UTC)


class SignalAction(StrEnum):
    """Direction of a trade."""

    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    """How an order is priced."""

    MARKET = "MARKET"
    LIMIT = "LIMIT"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketTick(_Payload):
    """Last traded price of one instrument. A price or token of 0 is a value."""

    instrument_token: int = Field(ge=0)
    symbol: str = Field(min_length=1)
    last_price: float = Field(ge=0)
    volume: int = Field(default=0, ge=0)
    timestamp: datetime = Field(default_factory=utc_now)


class TradingSignal(_Payload):
    """A strategy's intent to trade, before or after validation."""

    signal_id: str = Field(default_factory=generate_uuid7, min_length=1)
    strategy_id: str = Field(min_length=1)
    instrument_token: int = Field(ge=0)
    symbol: str = Field(min_length=1)
    action: SignalAction
    quantity: int = Field(gt=0)
    order_type: OrderType = OrderType.MARKET
    price: float | None = Field(default=None, gt=0)
    confidence: float = Field(default=1.0, ge=0, le=1)
    timestamp: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _limit_has_price(self) -> TradingSignal:
        if self.order_type is OrderType.LIMIT and self.price is None:
            raise ValueError("a LIMIT signal needs a price")
        return self


class ValidatedSignal(_Payload):
    """A signal the validator accepted."""

    original_signal: TradingSignal
    validator: str = "signal_validator"
    validated_at: datetime = Field(default_factory=utc_now)


class RejectedSignal(_Payload):
    """A signal refused, with the stage that refused it and why."""

    signal_id: str | None = None
    strategy_id: str | None = None
    stage: Literal["validator", "trading_engine"]
    reason: str
    original_signal: dict[str, Any] = Field(default_factory=dict)


class OrderStatus(StrEnum):
    """State of an order on a trader: resting (PLACED) or one of the terminal states."""

    PLACED = "PLACED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class OrderEvent(_Payload):
    """An order's state on one namespace's trader.

    ``sequence`` numbers the order events of one namespace in the order the
    trader applied them (1, 2, ...); rebuilding a book from the ``executions``
    ledger applies fills in this order, which the average-cost P&L depends on.
    ``placed_at`` is when the trader accepted the order (its resting lifetime
    counts from there).
    """

    client_order_id: str
    signal_id: str
    strategy_id: str
    namespace: str
    instrument_token: int
    symbol: str
    action: SignalAction
    quantity: int = Field(gt=0)
    order_type: OrderType
    limit_price: float | None = None
    status: OrderStatus
    fill_price: float | None = None
    reason: str | None = None
    sequence: int | None = Field(default=None, ge=1)
    placed_at: datetime | None = None


EVENT_TYPE_FOR_STATUS = {
    OrderStatus.PLACED: EventType.ORDER_PLACED,
    OrderStatus.FILLED: EventType.ORDER_FILLED,
    OrderStatus.REJECTED: EventType.ORDER_REJECTED,
    OrderStatus.CANCELLED: EventType.ORDER_CANCELLED,
}
