"""A simulated broker: fills orders against the last traded price, tracks books.

Pricing rules (``s`` is ``slippage_bps / 10_000``):

* MARKET BUY fills at ``last * (1 + s)``, MARKET SELL at ``last * (1 - s)``.
  A MARKET order needs a price no older than ``max_price_age_s``; otherwise it
  is REJECTED.
* LIMIT BUY is marketable when ``last <= limit`` and fills at
  ``min(limit, last * (1 + s))``; LIMIT SELL when ``last >= limit``, at
  ``max(limit, last * (1 - s))``: the slipped price, never worse than the limit.
  A LIMIT order that is not marketable, or has no fresh price to judge by, rests
  (PLACED) until :meth:`PaperTrader.on_tick` brings a price that crosses it.
  Resting orders never expire.

A price of 0.0 is a price. There is no buying-power or short-sale check: limits
on size and notional belong to signal validation, so cash may go negative and
positions may go short. Books are kept per strategy, each starting with
``starting_cash``; realized P&L uses the average-cost method.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from core.schemas.events import OrderStatus, OrderType, SignalAction, utc_now
from core.streaming.topic_names import validate_topic_name
from services.trading_engine.orders import OrderRequest, OrderResult

DEFAULT_STARTING_CASH = 10_000_000.0
DEFAULT_MAX_REMEMBERED_ORDERS = 100_000


def check_trader_parameters(
    slippage_bps: float, starting_cash: float, max_price_age_s: float
) -> None:
    """Raise ValueError unless the parameters make a working paper trader."""
    if not math.isfinite(slippage_bps) or slippage_bps < 0:
        raise ValueError(f"slippage_bps must be finite and >= 0, got {slippage_bps}")
    if not math.isfinite(starting_cash):
        raise ValueError(f"starting_cash must be finite, got {starting_cash}")
    if not (math.isfinite(max_price_age_s) and max_price_age_s > 0):
        raise ValueError(f"max_price_age_s must be finite and positive, got {max_price_age_s}")


@dataclass(slots=True)
class _Position:
    quantity: int = 0
    avg_price: float = 0.0


@dataclass(slots=True)
class _Book:
    cash: float
    realized: float = 0.0
    positions: dict[int, _Position] = field(default_factory=dict)

    def apply_fill(self, instrument_token: int, signed_qty: int, price: float) -> None:
        """Move cash and position by one fill and realize P&L on the closed part."""
        self.cash -= signed_qty * price
        pos = self.positions.setdefault(instrument_token, _Position())
        old = pos.quantity
        new = old + signed_qty
        if old == 0 or (old > 0) == (signed_qty > 0):
            pos.avg_price = (pos.avg_price * abs(old) + price * abs(signed_qty)) / abs(new)
        else:
            closed = min(abs(old), abs(signed_qty))
            self.realized += closed * (price - pos.avg_price) * (1 if old > 0 else -1)
            if new == 0:
                pos.avg_price = 0.0
            elif (new > 0) != (old > 0):
                pos.avg_price = price
        pos.quantity = new


class PaperTrader:
    """The simulated trader of one namespace; idempotent on ``client_order_id``.

    Every order id seen is remembered (terminal ones up to
    ``max_remembered_orders``, resting ones until they fill), and a repeat
    returns the order's current state with ``duplicate=True`` without trading.
    """

    def __init__(
        self,
        namespace: str,
        slippage_bps: float = 5.0,
        starting_cash: float = DEFAULT_STARTING_CASH,
        max_price_age_s: float = 60.0,
        clock: Callable[[], datetime] | None = None,
        max_remembered_orders: int = DEFAULT_MAX_REMEMBERED_ORDERS,
    ) -> None:
        check_trader_parameters(slippage_bps, starting_cash, max_price_age_s)
        if max_remembered_orders < 1:
            raise ValueError("max_remembered_orders must be at least 1")
        self._namespace = validate_topic_name(namespace)
        self._slippage = slippage_bps / 10_000
        self._starting_cash = starting_cash
        self._max_price_age_s = max_price_age_s
        self._clock = clock or utc_now
        self._max_remembered = max_remembered_orders
        self._results: dict[str, OrderResult] = {}
        self._resting: dict[str, OrderRequest] = {}
        self._terminal: deque[str] = deque()
        self._books: dict[str, _Book] = {}

    @property
    def namespace(self) -> str:
        """The broker namespace this trader executes for."""
        return self._namespace

    @property
    def starting_cash(self) -> float:
        """Cash each strategy's book starts with."""
        return self._starting_cash

    async def place_order(
        self, order: OrderRequest, last_price: float | None, price_time: datetime | None
    ) -> OrderResult:
        """Fill, rest or reject ``order`` given the instrument's last price and its time.

        ``price_time`` None skips the age check; a naive one raises ValueError.
        """
        seen = self._results.get(order.client_order_id)
        if seen is not None:
            return replace(seen, duplicate=True)
        result = self._decide(order, last_price, price_time)
        self._record(result)
        return result

    def on_tick(self, instrument_token: int, price: float) -> list[OrderResult]:
        """Fill the resting orders on ``instrument_token`` that ``price`` crosses, oldest first."""
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price must be finite and >= 0, got {price}")
        fills: list[OrderResult] = []
        for order in list(self._resting.values()):
            if order.instrument_token != instrument_token:
                continue
            fill_price = self._fill_price(order, price)
            if fill_price is not None:
                fill = self._fill(order, fill_price)
                self._record(fill)
                fills.append(fill)
        return fills

    def order(self, client_order_id: str) -> OrderResult | None:
        """The current state of a remembered order, or None."""
        return self._results.get(client_order_id)

    def resting_orders(self) -> list[OrderResult]:
        """Orders placed but not yet filled, oldest first."""
        return [self._results[oid] for oid in self._resting]

    def position(self, strategy_id: str, instrument_token: int) -> int:
        """Net quantity ``strategy_id`` holds: positive long, negative short."""
        book = self._books.get(strategy_id)
        pos = None if book is None else book.positions.get(instrument_token)
        return 0 if pos is None else pos.quantity

    def positions(self, strategy_id: str) -> dict[int, int]:
        """Every non-flat position of ``strategy_id`` by instrument token."""
        book = self._books.get(strategy_id)
        if book is None:
            return {}
        return {tok: p.quantity for tok, p in book.positions.items() if p.quantity}

    def cash(self, strategy_id: str) -> float:
        """Cash of ``strategy_id``'s book; ``starting_cash`` before any fill."""
        book = self._books.get(strategy_id)
        return self._starting_cash if book is None else book.cash

    def realized_pnl(self, strategy_id: str) -> float:
        """P&L locked in by closing trades, average-cost method."""
        book = self._books.get(strategy_id)
        return 0.0 if book is None else book.realized

    def pnl(self, strategy_id: str, marks: Mapping[int, float]) -> float:
        """Mark-to-market P&L: cash change plus each position valued at its mark.

        Every open position needs a mark; a missing one raises KeyError rather
        than silently valuing the position at zero.
        """
        book = self._books.get(strategy_id)
        if book is None:
            return 0.0
        value = book.cash - self._starting_cash
        for token, pos in book.positions.items():
            if pos.quantity:
                if token not in marks:
                    raise KeyError(f"no mark for instrument {token} held by {strategy_id}")
                value += pos.quantity * marks[token]
        return value

    def _decide(
        self, order: OrderRequest, last_price: float | None, price_time: datetime | None
    ) -> OrderResult:
        if last_price is not None and (not math.isfinite(last_price) or last_price < 0):
            return self._reject(order, f"invalid price {last_price} for {order.symbol}")
        problem = self._price_problem(order.symbol, last_price, price_time)
        if order.order_type is OrderType.MARKET:
            if problem is not None:
                return self._reject(order, problem)
            assert last_price is not None
            fill_price = self._fill_price(order, last_price)
            assert fill_price is not None
            return self._fill(order, fill_price)
        if problem is None:
            assert last_price is not None
            fill_price = self._fill_price(order, last_price)
            if fill_price is not None:
                return self._fill(order, fill_price)
            side = "above" if order.action is SignalAction.BUY else "below"
            reason = f"resting: last {last_price} {side} limit {order.limit_price}"
        else:
            reason = f"resting: {problem}"
        self._resting[order.client_order_id] = order
        return OrderResult(order, self._namespace, OrderStatus.PLACED, reason=reason)

    def _price_problem(
        self, symbol: str, last_price: float | None, price_time: datetime | None
    ) -> str | None:
        if last_price is None:
            return f"no price for {symbol}"
        if price_time is None:
            return None
        if price_time.tzinfo is None or price_time.utcoffset() is None:
            raise ValueError("price_time is a naive datetime; a timezone-aware one is required")
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("clock returned a naive datetime; a timezone-aware one is required")
        age = (now - price_time).total_seconds()
        if age > self._max_price_age_s:
            return f"stale price for {symbol}: {age:.1f}s old, max {self._max_price_age_s:g}s"
        return None

    def _fill_price(self, order: OrderRequest, last: float) -> float | None:
        """The fill price at ``last``, or None when a limit order does not cross."""
        limit = order.limit_price
        if order.action is SignalAction.BUY:
            slipped = last * (1 + self._slippage)
            if order.order_type is OrderType.MARKET:
                return slipped
            assert limit is not None
            return min(limit, slipped) if last <= limit else None
        slipped = last * (1 - self._slippage)
        if order.order_type is OrderType.MARKET:
            return slipped
        assert limit is not None
        return max(limit, slipped) if last >= limit else None

    def _fill(self, order: OrderRequest, price: float) -> OrderResult:
        book = self._books.get(order.strategy_id)
        if book is None:
            book = self._books[order.strategy_id] = _Book(cash=self._starting_cash)
        book.apply_fill(order.instrument_token, order.signed_quantity, price)
        self._resting.pop(order.client_order_id, None)
        return OrderResult(order, self._namespace, OrderStatus.FILLED, fill_price=price)

    def _reject(self, order: OrderRequest, reason: str) -> OrderResult:
        return OrderResult(order, self._namespace, OrderStatus.REJECTED, reason=reason)

    def _record(self, result: OrderResult) -> None:
        self._results[result.client_order_id] = result
        if result.status is OrderStatus.PLACED:
            return
        self._terminal.append(result.client_order_id)
        while len(self._terminal) > self._max_remembered:
            self._results.pop(self._terminal.popleft(), None)
