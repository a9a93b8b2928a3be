"""The orders and executions topics as the ledger, folded back into books.

The engine publishes every state of every order: ``order.placed`` on
``<ns>.orders``; ``order.filled``, ``order.rejected`` and ``order.cancelled`` on
``<ns>.executions``. Folding those events gives back, per namespace: each
strategy's book (fills applied in ledger ``sequence`` order, which the
average-cost P&L depends on), the orders still resting, the most recent finished
client order ids and signal ids, and the highest sequence number.

The fold reads events in any order (two topics, several partitions) and is
idempotent: an event published twice (a send retried after its acknowledgement
was lost) counts once. It keeps little per event: a fill as five numbers and
names, a placed order only until its end is seen. It can start from a snapshot
(:mod:`services.trading_engine.snapshot`): events already in the snapshot are
read only for their ids. Records that are not order events of the namespace are
counted, not used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from core.schemas.events import EventType, OrderEvent, OrderStatus
from core.schemas.topics import TopicMap
from core.streaming.types import FetchedRecord
from services.trading_engine.book import Book
from services.trading_engine.orders import OrderRequest

_STATUS_OF_TYPE = {
    EventType.ORDER_PLACED.value: OrderStatus.PLACED,
    EventType.ORDER_FILLED.value: OrderStatus.FILLED,
    EventType.ORDER_REJECTED.value: OrderStatus.REJECTED,
    EventType.ORDER_CANCELLED.value: OrderStatus.CANCELLED,
}
_NEVER = math.inf


@dataclass(frozen=True)
class RestingOrder:
    """An order placed and not finished: what the trader needs to keep working it."""

    request: OrderRequest
    placed_at: datetime
    sequence: int | None
    correlation_id: str | None


@dataclass
class LedgerState:
    """A namespace's trading state as the ledger records it."""

    namespace: str
    books: dict[str, Book] = field(default_factory=dict)
    resting: list[RestingOrder] = field(default_factory=list)
    finished: list[tuple[str, OrderStatus]] = field(default_factory=list)
    executed_signals: list[str] = field(default_factory=list)
    sequence: int = 0
    events: int = 0
    fills: int = 0
    ignored: int = 0
    duplicates: int = 0
    from_snapshot: bool = False


def request_of(event: OrderEvent) -> OrderRequest:
    """The order request an order event describes."""
    return OrderRequest(
        client_order_id=event.client_order_id,
        signal_id=event.signal_id,
        strategy_id=event.strategy_id,
        instrument_token=event.instrument_token,
        symbol=event.symbol,
        action=event.action,
        quantity=event.quantity,
        order_type=event.order_type,
        limit_price=event.limit_price,
    )


def event_time(envelope: Mapping[str, Any]) -> datetime:
    """The envelope's timestamp (aware, UTC); the epoch when missing or malformed."""
    raw = envelope.get("timestamp")
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
    return datetime.fromtimestamp(0, UTC)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fill_of(data: Mapping[str, Any]) -> tuple[str, int, int, float] | None:
    """(strategy, instrument, signed quantity, price) of a fill event, or None if unusable."""
    strategy = data.get("strategy_id")
    token = data.get("instrument_token")
    qty = data.get("quantity")
    action = data.get("action")
    price = data.get("fill_price")
    if not (isinstance(strategy, str) and strategy and isinstance(token, int)):
        return None
    if not (isinstance(qty, int) and qty > 0 and action in ("BUY", "SELL")):
        return None
    if not isinstance(price, int | float) or isinstance(price, bool) or not math.isfinite(price):
        return None
    if isinstance(token, bool) or isinstance(qty, bool):
        return None
    return strategy, token, qty if action == "BUY" else -qty, float(price)


class LedgerFold:
    """Accumulates one namespace's order events, in any order, into a :class:`LedgerState`.

    ``base`` is a snapshot's state: its books and resting orders are the start;
    events read with ``ids_only=True`` (those the snapshot already covers) only
    refill the recent ids.
    """

    def __init__(
        self,
        namespace: str,
        starting_cash: float,
        remember: int = 20_000,
        base: LedgerState | None = None,
    ) -> None:
        self.namespace = namespace
        self.starting_cash = starting_cash
        self.remember = remember
        self._placed: dict[str, tuple[dict[str, Any], str | None, datetime]] = {}
        self._terminal: dict[str, tuple[OrderStatus, float]] = {}
        self._fills: list[tuple[float, int, str, int, int, float]] = []
        self._signals: dict[str, float] = {}
        self._count = 0
        self.state = LedgerState(namespace)
        self._base = base
        if base is not None:
            self.state.sequence = base.sequence
            self.state.from_snapshot = True
            for order in base.resting:
                self._signals[order.request.signal_id] = order.sequence or 0

    def add(self, envelope: Mapping[str, Any], *, ids_only: bool = False) -> None:
        """Fold one decoded envelope (anything else is counted as ignored)."""
        status = _STATUS_OF_TYPE.get(str(envelope.get("type")))
        data = envelope.get("data")
        if status is None or not isinstance(data, dict):
            self.state.ignored += 1
            return
        oid, signal_id, sequence = (
            data.get("client_order_id"),
            data.get("signal_id"),
            data.get("sequence"),
        )
        usable = (
            isinstance(oid, str)
            and oid
            and isinstance(signal_id, str)
            and data.get("namespace") == self.namespace
            and data.get("status") == status.value
            and (sequence is None or (_is_int(sequence) and sequence >= 1))
        )
        if not usable:
            self.state.ignored += 1
            return
        assert isinstance(oid, str) and isinstance(signal_id, str)
        seq = float(sequence) if sequence is not None else _NEVER
        if sequence is not None:
            self.state.sequence = max(self.state.sequence, sequence)
        self._signals[signal_id] = min(seq, self._signals.get(signal_id, _NEVER))
        if status is OrderStatus.PLACED:
            if ids_only or oid in self._terminal:
                return
            if oid in self._placed:
                self.state.duplicates += 1
                return
            correlation = envelope.get("correlation_id")
            self._placed[oid] = (
                data,
                correlation if isinstance(correlation, str) else None,
                event_time(envelope),
            )
            self.state.events += 1
            return
        if oid in self._terminal:
            self.state.duplicates += 1
            return
        self._terminal[oid] = (status, seq)
        self._placed.pop(oid, None)
        if ids_only:
            return
        self.state.events += 1
        if status is OrderStatus.FILLED:
            fill = _fill_of(data)
            if fill is None:
                self.state.ignored += 1
                return
            self._count += 1
            self._fills.append((seq, self._count, *fill))

    def result(self) -> LedgerState:
        """Books with every fill applied in sequence order, resting orders, recent ids."""
        state = self.state
        base = self._base
        state.books = {}
        if base is not None:
            state.books = {sid: Book.from_dict(b.to_dict()) for sid, b in base.books.items()}
        for _, _, strategy, token, signed, price in sorted(self._fills, key=lambda f: f[:2]):
            book = state.books.get(strategy)
            if book is None:
                book = state.books[strategy] = Book(cash=self.starting_cash)
            book.apply_fill(token, signed, price)
        state.fills = len(self._fills)
        resting: list[tuple[float, datetime, RestingOrder]] = []
        if base is not None:
            for order in base.resting:
                if order.request.client_order_id not in self._terminal:
                    resting.append((order.sequence or 0, order.placed_at, order))
        for oid, (data, correlation, at) in self._placed.items():
            if oid in self._terminal:
                continue
            try:
                event = OrderEvent.model_validate(data)
                request = request_of(event)
            except (ValidationError, ValueError):
                state.ignored += 1
                continue
            placed_at = event.placed_at.astimezone(UTC) if event.placed_at else at
            order = RestingOrder(request, placed_at, event.sequence, correlation)
            resting.append((event.sequence or 0, placed_at, order))
        resting.sort(key=lambda r: (r[0], r[1]))
        state.resting = [order for _, _, order in resting]
        finished = sorted(self._terminal.items(), key=lambda item: item[1][1])
        state.finished = [(oid, status) for oid, (status, _) in finished[-self.remember :]]
        recent = sorted(self._signals.items(), key=lambda item: item[1])
        state.executed_signals = [sid for sid, _ in recent[-self.remember :]]
        return state


def decode_envelope(record: FetchedRecord) -> dict[str, Any] | None:
    """The record's value as a JSON object, or None."""
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def ledger_topics(namespaces: Iterable[str]) -> dict[str, str]:
    """Ledger topic -> namespace, for every namespace."""
    topics: dict[str, str] = {}
    for namespace in namespaces:
        routed = TopicMap(namespace)
        topics[routed.orders()] = namespace
        topics[routed.executions()] = namespace
    return topics
