"""A simulated broker: fills orders against the last traded price, tracks books.

Pricing rules (``s`` is ``slippage_bps / 10_000``):

* MARKET BUY fills at ``last * (1 + s)``, MARKET SELL at ``last * (1 - s)``.
  A MARKET order needs a price no older than ``max_price_age_s``; otherwise it
  is REJECTED.
* LIMIT BUY is marketable when ``last <= limit`` and fills at
  ``min(limit, last * (1 + s))``; LIMIT SELL when ``last >= limit``, at
  ``max(limit, last * (1 - s))``: the slipped price, never worse than the limit.
  A LIMIT order that is not marketable, or has no fresh price to judge by, rests
  (PLACED) until :meth:`PaperTrader.on_tick` brings a price that crosses it, or
  until it is older than ``resting_order_ttl_s`` (:meth:`PaperTrader.expire`
  cancels it). At most ``max_resting_orders`` rest at once; beyond that a LIMIT
  order that would rest is REJECTED.

Every state change gets the next ledger sequence number, so the books can be
rebuilt from the published events in the order they were applied
(:mod:`services.trading_engine.ledger`, :meth:`PaperTrader.restore`).

A price of 0.0 is a price. There is no buying-power or short-sale check: limits
on size and notional are checked before an order reaches the trader, so cash may
go negative and positions may go short. Books are kept per strategy, each
starting with ``starting_cash``; realized P&L uses the average-cost method.

Memory: resting orders, one book per strategy, and the ids of the most recent
``max_remembered_orders`` finished orders (to answer a repeat as a duplicate).
The history of orders lives in the ledger topics, not here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from core.schemas.events import OrderStatus, OrderType, SignalAction, utc_now
from core.streaming.topic_names import validate_topic_name
from services.trading_engine.book import Book
from services.trading_engine.ledger import LedgerState, RestingOrder
from services.trading_engine.orders import OrderRequest, OrderResult

DEFAULT_STARTING_CASH = 10_000_000.0
DEFAULT_MAX_REMEMBERED_ORDERS = 20_000
DEFAULT_MAX_RESTING_ORDERS = 1_000

#: Whether a resting order (by client order id) may be filled or expired now.
Eligible = Callable[[str], bool]


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
class _Resting:
    request: OrderRequest
    placed_at: datetime
    sequence: int | None


class PaperTrader:
    """The simulated trader of one namespace; idempotent on ``client_order_id``.

    A repeat of an order id that is resting or among the remembered finished
    ones returns the order's state with ``duplicate=True`` without trading.
    """

    def __init__(
        self,
        namespace: str,
        slippage_bps: float = 5.0,
        starting_cash: float = DEFAULT_STARTING_CASH,
        max_price_age_s: float = 60.0,
        clock: Callable[[], datetime] | None = None,
        max_remembered_orders: int = DEFAULT_MAX_REMEMBERED_ORDERS,
        *,
        resting_order_ttl_s: float | None = None,
        max_resting_orders: int = DEFAULT_MAX_RESTING_ORDERS,
    ) -> None:
        check_trader_parameters(slippage_bps, starting_cash, max_price_age_s)
        if max_remembered_orders < 1:
            raise ValueError("max_remembered_orders must be at least 1")
        if max_resting_orders < 1:
            raise ValueError("max_resting_orders must be at least 1")
        if resting_order_ttl_s is not None and not resting_order_ttl_s > 0:
            raise ValueError(f"resting_order_ttl_s must be positive, got {resting_order_ttl_s}")
        self._namespace = validate_topic_name(namespace)
        self._slippage = slippage_bps / 10_000
        self._starting_cash = starting_cash
        self._max_price_age_s = max_price_age_s
        self._clock = clock or utc_now
        self._max_remembered = max_remembered_orders
        self._ttl_s = resting_order_ttl_s
        self._max_resting = max_resting_orders
        self._resting: dict[str, _Resting] = {}
        self._by_token: dict[int, dict[str, _Resting]] = {}
        self._finished: OrderedDict[str, OrderStatus] = OrderedDict()
        self._books: dict[str, Book] = {}
        self._sequence = 0

    @property
    def namespace(self) -> str:
        """The broker namespace this trader executes for."""
        return self._namespace

    @property
    def starting_cash(self) -> float:
        """Cash each strategy's book starts with."""
        return self._starting_cash

    @property
    def sequence(self) -> int:
        """The last ledger sequence number given out."""
        return self._sequence

    # ------------------------------------------------------------------ trading

    async def place_order(
        self, order: OrderRequest, last_price: float | None, price_time: datetime | None
    ) -> OrderResult:
        """Fill, rest or reject ``order`` given the instrument's last price and its time.

        ``price_time`` None skips the age check; a naive one raises ValueError.
        """
        oid = order.client_order_id
        resting = self._resting.get(oid)
        if resting is not None:
            return OrderResult(
                resting.request,
                self._namespace,
                OrderStatus.PLACED,
                duplicate=True,
                placed_at=resting.placed_at,
            )
        finished = self._finished.get(oid)
        if finished is not None:
            self._finished.move_to_end(oid)
            return OrderResult(order, self._namespace, finished, duplicate=True)
        return self._decide(order, last_price, price_time)

    def on_tick(
        self, instrument_token: int, price: float, eligible: Eligible | None = None
    ) -> list[OrderResult]:
        """Fill the resting orders on ``instrument_token`` that ``price`` crosses, oldest first.

        ``eligible(client_order_id)`` False keeps an order resting for now.
        """
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price must be finite and >= 0, got {price}")
        fills: list[OrderResult] = []
        waiting = self._by_token.get(instrument_token)
        if not waiting:
            return fills
        for oid, resting in list(waiting.items()):
            if eligible is not None and not eligible(oid):
                continue
            fill_price = self._fill_price(resting.request, price)
            if fill_price is not None:
                self._unrest(oid)
                fills.append(self._fill(resting.request, fill_price, resting.placed_at))
        return fills

    def expire(
        self, now: datetime | None = None, eligible: Eligible | None = None
    ) -> list[OrderResult]:
        """Cancel the resting orders older than ``resting_order_ttl_s``, oldest first.

        ``eligible(client_order_id)`` False keeps an order resting for now.
        """
        if self._ttl_s is None or not self._resting:
            return []
        when = now or self._clock()
        expired: list[OrderResult] = []
        for oid, resting in list(self._resting.items()):
            age = (when - resting.placed_at).total_seconds()
            if age <= self._ttl_s:
                break  # placement order: the rest are younger
            if eligible is not None and not eligible(oid):
                continue
            expired.append(self.cancel(oid, f"expired: resting for more than {self._ttl_s:g} s"))
        return expired

    def cancel(self, client_order_id: str, reason: str) -> OrderResult:
        """Cancel a resting order; KeyError if it is not resting."""
        resting = self._unrest(client_order_id)
        result = OrderResult(
            resting.request,
            self._namespace,
            OrderStatus.CANCELLED,
            reason=reason,
            sequence=self._next_sequence(),
            placed_at=resting.placed_at,
        )
        self._remember(client_order_id, OrderStatus.CANCELLED)
        return result

    # ------------------------------------------------------------------ restore

    def restore(self, state: LedgerState) -> None:
        """Take over the books, resting orders and recent order ids the ledger records.

        Only before the first order: a trader that traded refuses (RuntimeError).
        """
        if self._sequence or self._books or self._resting or self._finished:
            raise RuntimeError(f"trader {self._namespace} already traded; cannot restore")
        if state.namespace != self._namespace:
            raise ValueError(f"ledger of {state.namespace} given to trader {self._namespace}")
        self._books = {sid: Book.from_dict(book.to_dict()) for sid, book in state.books.items()}
        for order in state.resting:
            self._rest(_Resting(order.request, order.placed_at, order.sequence))
        for oid, status in state.finished:
            self._remember(oid, status)
        self._sequence = state.sequence

    def resting_entries(self) -> list[RestingOrder]:
        """Resting orders with their placement time and sequence, oldest first."""
        return [
            RestingOrder(r.request, r.placed_at, r.sequence, None) for r in self._resting.values()
        ]

    # ------------------------------------------------------------------ reading

    def order(self, client_order_id: str) -> OrderStatus | None:
        """The state of a resting or remembered finished order, or None."""
        if client_order_id in self._resting:
            return OrderStatus.PLACED
        return self._finished.get(client_order_id)

    def resting_orders(self) -> list[OrderResult]:
        """Orders placed but not yet filled, oldest first."""
        return [
            OrderResult(
                r.request,
                self._namespace,
                OrderStatus.PLACED,
                sequence=r.sequence,
                placed_at=r.placed_at,
            )
            for r in self._resting.values()
        ]

    def books(self) -> Mapping[str, Book]:
        """Every strategy's book (read-only use)."""
        return self._books

    def remembered_orders(self) -> int:
        """How many finished order ids are remembered."""
        return len(self._finished)

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
        return {tok: p.quantity for tok, p in book.open_positions().items()}

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
        try:
            return book.marked_pnl(self._starting_cash, marks)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} held by {strategy_id}") from None

    # ------------------------------------------------------------------ internals

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

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
            return self._fill(order, fill_price, None)
        if problem is None:
            assert last_price is not None
            fill_price = self._fill_price(order, last_price)
            if fill_price is not None:
                return self._fill(order, fill_price, None)
            side = "above" if order.action is SignalAction.BUY else "below"
            reason = f"resting: last {last_price} {side} limit {order.limit_price}"
        else:
            reason = f"resting: {problem}"
        if len(self._resting) >= self._max_resting:
            return self._reject(order, f"too many resting orders ({self._max_resting})")
        placed_at = self._clock()
        sequence = self._next_sequence()
        self._rest(_Resting(order, placed_at, sequence))
        return OrderResult(
            order,
            self._namespace,
            OrderStatus.PLACED,
            reason=reason,
            sequence=sequence,
            placed_at=placed_at,
        )

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

    def _fill(self, order: OrderRequest, price: float, placed_at: datetime | None) -> OrderResult:
        """Apply a fill; an order filled at placement gets a placement sequence too."""
        placed_sequence = None
        if placed_at is None:
            placed_sequence = self._next_sequence()
            placed_at = self._clock()
        book = self._books.get(order.strategy_id)
        if book is None:
            book = self._books[order.strategy_id] = Book(cash=self._starting_cash)
        book.apply_fill(order.instrument_token, order.signed_quantity, price)
        self._remember(order.client_order_id, OrderStatus.FILLED)
        return OrderResult(
            order,
            self._namespace,
            OrderStatus.FILLED,
            fill_price=price,
            sequence=self._next_sequence(),
            placed_sequence=placed_sequence,
            placed_at=placed_at,
        )

    def _reject(self, order: OrderRequest, reason: str) -> OrderResult:
        self._remember(order.client_order_id, OrderStatus.REJECTED)
        return OrderResult(
            order,
            self._namespace,
            OrderStatus.REJECTED,
            reason=reason,
            sequence=self._next_sequence(),
        )

    def _rest(self, resting: _Resting) -> None:
        oid = resting.request.client_order_id
        self._resting[oid] = resting
        self._by_token.setdefault(resting.request.instrument_token, {})[oid] = resting

    def _unrest(self, client_order_id: str) -> _Resting:
        resting = self._resting.pop(client_order_id)
        token = resting.request.instrument_token
        waiting = self._by_token[token]
        del waiting[client_order_id]
        if not waiting:
            del self._by_token[token]
        return resting

    def _remember(self, client_order_id: str, status: OrderStatus) -> None:
        self._finished[client_order_id] = status
        self._finished.move_to_end(client_order_id)
        while len(self._finished) > self._max_remembered:
            self._finished.popitem(last=False)
