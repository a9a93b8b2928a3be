"""The engine's own limits: a second line behind the signal validator.

The engine does not trust ``signals.validated`` blindly: anyone who can write to
that topic could place any order. Before an order reaches a trader the signal
must pass, in order: quantity at most ``max_quantity``; a LIMIT price within
``price_band_pct`` of the last traded price (when one is known); notional
(quantity x the LIMIT price, else the last price) at most ``max_notional``.
A breach becomes a ``signal.rejected`` event (stage ``trading_engine``) with the
reason, counted by kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config.settings import Settings
from core.schemas.events import OrderType, TradingSignal


@dataclass(frozen=True)
class LimitBreach:
    """Which limit a signal broke (``quantity``, ``price`` or ``notional``) and why."""

    kind: str
    reason: str


class EngineLimits:
    """Quantity, price-band and notional checks of one signal against the last price."""

    def __init__(self, max_quantity: int, max_notional: float, price_band_pct: float) -> None:
        if max_quantity < 1:
            raise ValueError(f"max_quantity must be >= 1, got {max_quantity}")
        if not (math.isfinite(max_notional) and max_notional > 0):
            raise ValueError(f"max_notional must be positive and finite, got {max_notional}")
        if not (math.isfinite(price_band_pct) and price_band_pct > 0):
            raise ValueError(f"price_band_pct must be positive and finite, got {price_band_pct}")
        self.max_quantity = max_quantity
        self.max_notional = max_notional
        self.price_band = price_band_pct / 100.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineLimits:
        """The limits of ``settings.trading`` (the validator's quantity and notional)."""
        trading = settings.trading
        return cls(trading.max_quantity, trading.max_notional, trading.price_band_pct)

    def check(self, signal: TradingSignal, last_price: float | None) -> LimitBreach | None:
        """The first limit ``signal`` breaks given the instrument's ``last_price``, or None."""
        if signal.quantity > self.max_quantity:
            return LimitBreach(
                "quantity",
                f"quantity {signal.quantity} above the engine's max {self.max_quantity}",
            )
        limit = signal.price if signal.order_type is OrderType.LIMIT else None
        if limit is not None and not math.isfinite(limit):
            return LimitBreach("price", f"limit price {limit} is not a finite number")
        if limit is not None and last_price is not None and last_price > 0:
            deviation = abs(limit / last_price - 1.0)
            if deviation > self.price_band:
                return LimitBreach(
                    "price",
                    f"limit price {limit:g} is {deviation * 100:.3g}% from the last price "
                    f"{last_price:g} (band {self.price_band * 100:g}%)",
                )
        price = limit if limit is not None else last_price
        if price is not None:
            notional = signal.quantity * price
            if notional > self.max_notional:
                return LimitBreach(
                    "notional",
                    f"notional {notional:.6g} above the engine's max {self.max_notional:.6g}",
                )
        return None
