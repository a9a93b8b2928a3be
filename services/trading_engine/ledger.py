"""The orders and executions topics as the ledger, folded back into books.

The engine publishes every state of every order: ``order.placed`` on
``<ns>.orders``; ``order.filled``, ``order.rejected`` and ``order.cancelled`` on
``<ns>.executions``. Folding those events gives back, per namespace: each
strategy's book (fills applied in ledger ``sequence`` order, which the
average-cost P&L depends on), the orders still resting, the most recent finished
client order ids, and the highest sequence number. The fold is idempotent: an
event published twice (a send retried after its acknowledgement was lost) counts
once. Records that are not order events of the namespace are counted, not used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from core.config.settings import RedpandaSettings
from core.schemas.events import EventType, OrderEvent, OrderStatus
from core.schemas.topics import TopicMap
from core.streaming.topic_reader import ScanResult, scan_topics
from core.streaming.types import FetchedRecord, TopicPartition
from services.trading_engine.book import Book
from services.trading_engine.orders import OrderRequest

logger = logging.getLogger(__name__)

_STATUS_OF_TYPE = {
    EventType.ORDER_PLACED.value: OrderStatus.PLACED,
    EventType.ORDER_FILLED.value: OrderStatus.FILLED,
    EventType.ORDER_REJECTED.value: OrderStatus.REJECTED,
    EventType.ORDER_CANCELLED.value: OrderStatus.CANCELLED,
}
_TERMINAL = (OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED)
_NEVER = float("inf")


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


class LedgerFold:
    """Accumulates one namespace's order events, in any order, into a :class:`LedgerState`."""

    def __init__(self, namespace: str, starting_cash: float, remember: int = 20_000) -> None:
        self.namespace = namespace
        self.starting_cash = starting_cash
        self.remember = remember
        self._placed: dict[str, tuple[OrderEvent, datetime, str | None]] = {}
        self._terminal: dict[str, tuple[OrderStatus, float]] = {}
        self._fills: list[tuple[float, datetime, int, OrderEvent]] = []
        self._signals: dict[str, float] = {}
        self._count = 0
        self.state = LedgerState(namespace)

    def add(self, envelope: Mapping[str, Any]) -> None:
        """Fold one decoded envelope (anything else is counted as ignored)."""
        status = _STATUS_OF_TYPE.get(str(envelope.get("type")))
        data = envelope.get("data")
        if status is None or not isinstance(data, dict):
            self.state.ignored += 1
            return
        try:
            event = OrderEvent.model_validate(data)
        except ValidationError:
            self.state.ignored += 1
            return
        if event.namespace != self.namespace or event.status is not status:
            self.state.ignored += 1
            return
        self.state.events += 1
        seq = float(event.sequence) if event.sequence is not None else _NEVER
        if event.sequence is not None:
            self.state.sequence = max(self.state.sequence, event.sequence)
        oid = event.client_order_id
        self._signals[event.signal_id] = min(seq, self._signals.get(event.signal_id, _NEVER))
        if status is OrderStatus.PLACED:
            if oid in self._placed:
                self.state.duplicates += 1
                return
            correlation = envelope.get("correlation_id")
            self._placed[oid] = (
                event,
                event.placed_at.astimezone(UTC) if event.placed_at else event_time(envelope),
                correlation if isinstance(correlation, str) else None,
            )
            return
        if oid in self._terminal:
            self.state.duplicates += 1
            return
        self._terminal[oid] = (status, seq)
        if status is OrderStatus.FILLED and event.fill_price is not None:
            self._count += 1
            self._fills.append((seq, event_time(envelope), self._count, event))

    def result(self) -> LedgerState:
        """Books with every fill applied in sequence order, resting orders, recent ids."""
        state = self.state
        state.books = {}
        for _, _, _, fill in sorted(self._fills, key=lambda f: (f[0], f[1], f[2])):
            book = state.books.get(fill.strategy_id)
            if book is None:
                book = state.books[fill.strategy_id] = Book(cash=self.starting_cash)
            signed = fill.quantity if fill.action.value == "BUY" else -fill.quantity
            assert fill.fill_price is not None
            book.apply_fill(fill.instrument_token, signed, fill.fill_price)
        state.fills = len(self._fills)
        resting = [
            (event.sequence or 0, at, oid, event, correlation)
            for oid, (event, at, correlation) in self._placed.items()
            if oid not in self._terminal
        ]
        state.resting = [
            RestingOrder(request_of(event), at, event.sequence, correlation)
            for _, at, _, event, correlation in sorted(resting, key=lambda r: (r[0], r[1], r[2]))
        ]
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


@dataclass
class LedgerRead:
    """Ledger states by namespace, the other topics read with them, and what was read."""

    states: dict[str, LedgerState]
    ends: dict[TopicPartition, int]
    records: int
    undecodable: int
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


async def read_ledger(
    config: RedpandaSettings,
    namespaces: Sequence[str],
    *,
    starting_cash: float,
    remember: int = 20_000,
    extra_tails: Mapping[str, int] | None = None,
    timeout_s: float = 120.0,
) -> LedgerRead:
    """Fold the whole orders and executions ledger of ``namespaces`` in one pass.

    ``extra_tails`` names other topics to read in the same pass (the last N
    records of each partition); their decoded envelopes come back in ``extra``.
    """
    topics = ledger_topics(namespaces)
    tails = dict(extra_tails or {})
    folds = {ns: LedgerFold(ns, starting_cash, remember) for ns in namespaces}
    extra: dict[str, list[dict[str, Any]]] = {topic: [] for topic in tails}
    undecodable = 0

    def on_batch(batch: Sequence[FetchedRecord]) -> None:
        nonlocal undecodable
        for record in batch:
            envelope = decode_envelope(record)
            if envelope is None:
                undecodable += 1
            elif record.topic in topics:
                folds[topics[record.topic]].add(envelope)
            else:
                extra[record.topic].append(envelope)

    scan: ScanResult = await scan_topics(
        config, [*topics, *tails], on_batch, tail=tails, timeout_s=timeout_s
    )
    if undecodable:
        logger.warning("ledger: %d record(s) that are not JSON objects were skipped", undecodable)
    states = {ns: fold.result() for ns, fold in folds.items()}
    ends = {tp: end for tp, end in scan.ends.items() if tp.topic in topics}
    return LedgerRead(states, ends, scan.records, undecodable, extra)
