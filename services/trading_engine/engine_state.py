"""The trading engine's in-memory state and the views and logs made from it.

State: one trader per namespace (books, resting orders, recent order ids), the
last price of each instrument, instrument names, and the correlation chain of
each resting order. Views: book rows for the metrics collector, the demo and
the final log. Everything here is bounded: history lives in the ledger topics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import orjson

from core.config.settings import Settings
from core.streaming.correlation import CorrelationLogger
from core.streaming.types import RecordMetadata, TopicPartition
from services.trading_engine.ledger import LedgerState, ledger_topics
from services.trading_engine.ledger_store import (
    MAX_SNAPSHOT_BYTES,
    SNAPSHOT_TYPE,
    encode_snapshot,
    snapshot_topic,
)
from services.trading_engine.metrics import BookView
from services.trading_engine.outbox import Publisher
from services.trading_engine.restore import EngineHistory, Quote, read_engine_history
from services.trading_engine.trader_factory import Trader, TraderFactory

MAX_RESTING_LOGGED = 50
logger = logging.getLogger(__name__)


def routed_namespaces(settings: Settings) -> list[str]:
    """``broker_namespace`` and every namespace a strategy is routed to, sorted."""
    namespaces = {settings.broker_namespace}
    for targets in settings.trading.strategy_routes.values():
        namespaces.update(targets)
    return sorted(namespaces)


@dataclass(frozen=True)
class PositionRow:
    """One open (or realized) position of one strategy on one namespace."""

    namespace: str
    strategy_id: str
    instrument: str
    instrument_token: int
    quantity: int
    avg_price: float
    realized: float
    unrealized: float


class EngineState:
    """Traders, prices and names of one engine, with read views and state logs."""

    def __init__(
        self, settings: Settings, trader_factory: TraderFactory, clock: Callable[[], datetime]
    ) -> None:
        self.settings = settings
        self.trader_factory = trader_factory
        self._clock = clock
        self.namespaces = routed_namespaces(settings)
        self.last_prices: dict[int, float] = {}
        self.price_times: dict[int, datetime] = {}
        self.symbols: dict[int, str] = {}
        self._traders: dict[str, Trader] = {}
        self._strategies: dict[str, set[str]] = {}
        self._order_correlation: dict[str, str | None] = {}
        self._state_log = CorrelationLogger("trading_engine", __name__)
        self._ledger_topics = ledger_topics(self.namespaces)
        self.ledger_ends: dict[TopicPartition, int] | None = None
        self.snapshots_written = 0

    # ------------------------------------------------------------------ traders

    def trader(self, namespace: str) -> Trader:
        """The trader of ``namespace`` (made on first use)."""
        trader = self._traders.get(namespace)
        if trader is None:
            trader = self._traders[namespace] = self.trader_factory.get_trader(namespace)
        return trader

    def traders(self) -> dict[str, Trader]:
        """The traders this engine has used or restored, by namespace."""
        return dict(self._traders)

    def quote(self, instrument_token: int) -> Quote | None:
        """The last price of ``instrument_token`` and its time, if one was seen."""
        if instrument_token not in self.last_prices:
            return None
        return Quote(
            self.last_prices[instrument_token],
            self.price_times[instrument_token],
            self.symbols.get(instrument_token, ""),
        )

    # ------------------------------------------------------------------ views

    def book_views(self) -> list[BookView]:
        """Every strategy's book on every namespace."""
        views = []
        for namespace, trader in sorted(self._traders.items()):
            for strategy_id, book in sorted(trader.books().items()):
                views.append(BookView(namespace, strategy_id, book, trader.starting_cash))
        return views

    def marks(self) -> dict[int, float]:
        """Last price per instrument token."""
        return dict(self.last_prices)

    def instrument_name(self, token: int) -> str:
        """The instrument's symbol, or its token when no symbol was seen."""
        return self.symbols.get(token, str(token))

    def resting_counts(self) -> dict[str, int]:
        """Resting orders per namespace."""
        return {ns: len(trader.resting_orders()) for ns, trader in self._traders.items()}

    def position_rows(self) -> list[PositionRow]:
        """Rows of every position that is open or realized something."""
        rows = []
        for view in self.book_views():
            for token, pos in sorted(view.book.positions.items()):
                if not pos.quantity and not pos.realized:
                    continue
                mark = self.last_prices.get(token)
                rows.append(
                    PositionRow(
                        view.namespace,
                        view.strategy_id,
                        self.instrument_name(token),
                        token,
                        pos.quantity,
                        pos.avg_price,
                        pos.realized,
                        math.nan if mark is None else pos.unrealized(mark),
                    )
                )
        return rows

    # ------------------------------------------------------------------ snapshots

    def note_ack(self, metadata: RecordMetadata) -> None:
        """Advance the known ledger end offsets with a broker acknowledgement."""
        if self.ledger_ends is None or metadata.topic not in self._ledger_topics:
            return
        tp = TopicPartition(metadata.topic, metadata.partition)
        self.ledger_ends[tp] = max(self.ledger_ends.get(tp, 0), metadata.offset + 1)

    def capture_snapshots(self) -> dict[str, dict[str, object]]:
        """Snapshot payloads of every namespace, now (call when nothing is left to publish)."""
        ends = dict(self.ledger_ends or {})
        payloads: dict[str, dict[str, object]] = {}
        for namespace in self.namespaces:
            trader = self._traders.get(namespace)
            if trader is None:
                continue
            resting = [
                replace(
                    order, correlation_id=self._order_correlation.get(order.request.client_order_id)
                )
                for order in trader.resting_entries()
            ]
            own = {
                tp: end for tp, end in ends.items() if self._ledger_topics[tp.topic] == namespace
            }
            payloads[namespace] = encode_snapshot(
                namespace, trader.books(), resting, trader.sequence, own
            )
        return payloads

    async def write_snapshots(self, publisher: Publisher) -> None:
        """Capture every namespace's state and send it to its snapshot topic.

        The capture happens before the first await, so it matches the ledger
        offsets known at that moment. A snapshot that cannot be written is only
        logged: the next restart reads more of the ledger.
        """
        if self.ledger_ends is None:
            return
        for namespace, payload in self.capture_snapshots().items():
            size = len(orjson.dumps(payload))
            if size > MAX_SNAPSHOT_BYTES:
                logger.warning(
                    "ledger snapshot of %s not written: %d bytes (max %d)",
                    namespace,
                    size,
                    MAX_SNAPSHOT_BYTES,
                )
                continue
            try:
                await publisher.send(snapshot_topic(namespace), namespace, payload, SNAPSHOT_TYPE)
            except Exception as exc:
                logger.warning(
                    "ledger snapshot of %s not written: %s: %s", namespace, type(exc).__name__, exc
                )
                continue
            self.snapshots_written += 1

    # ------------------------------------------------------------------ restore

    async def _read_history(self) -> EngineHistory:
        return await read_engine_history(
            self.settings, self.namespaces, remember=self.settings.trading.remembered_ids
        )

    def adopt_ledger(self, namespace: str, state: LedgerState) -> None:
        """Give ``namespace``'s trader the state its ledger records."""
        trader = self.trader(namespace)
        trader.restore(state)
        self._strategies.setdefault(namespace, set()).update(state.books)
        for order in state.resting:
            self._strategies[namespace].add(order.request.strategy_id)
            self._order_correlation[order.request.client_order_id] = order.correlation_id
            self.symbols.setdefault(order.request.instrument_token, order.request.symbol)

    def log_restored(self, history: EngineHistory, seconds: float) -> None:
        """One line per namespace: what the books were rebuilt from and what they hold."""
        ends = {f"{tp.topic}[{tp.partition}]": end for tp, end in sorted(history.ends.items())}
        for namespace, state in sorted(history.ledger.states.items()):
            self._state_log.info(
                "book restored",
                namespace=namespace,
                seconds=round(seconds, 3),
                ledger_size=sum(history.ends.values()),
                ledger_records_read=history.ledger.records,
                order_events_read=state.events,
                fills_read=state.fills,
                ignored=state.ignored,
                duplicates=state.duplicates,
                sequence=state.sequence,
                resting=len(state.resting),
                remembered_orders=len(state.finished),
                books={sid: book.to_dict() for sid, book in sorted(state.books.items())},
                ends=ends,
                prices=len(history.quotes),
                snapshot=history.ledger.snapshots.get(namespace),
            )

    def log_final_state(self) -> None:
        """At stop: every book with its P&L marked to the last prices, and the resting orders."""
        marks = self.marks()
        for view in self.book_views():
            try:
                marked: float | None = view.book.marked_pnl(view.starting_cash, marks)
            except KeyError:
                marked = None
            self._state_log.info(
                "final book",
                namespace=view.namespace,
                strategy=view.strategy_id,
                cash=round(view.book.cash, 2),
                realized_pnl=round(view.book.realized, 2),
                marked_pnl=None if marked is None else round(marked, 2),
                positions={
                    self.instrument_name(token): [pos.quantity, round(pos.avg_price, 4)]
                    for token, pos in sorted(view.book.open_positions().items())
                },
            )
        for namespace, trader in sorted(self._traders.items()):
            resting = trader.resting_orders()
            for order in resting[:MAX_RESTING_LOGGED]:
                req = order.request
                self._state_log.info(
                    "resting order left",
                    namespace=namespace,
                    client_order_id=req.client_order_id,
                    strategy=req.strategy_id,
                    instrument=req.symbol,
                    action=req.action.value,
                    quantity=req.quantity,
                    limit_price=req.limit_price,
                    placed_at=order.placed_at.isoformat() if order.placed_at else None,
                )
            if len(resting) > MAX_RESTING_LOGGED:
                self._state_log.info(
                    "more resting orders left",
                    namespace=namespace,
                    not_listed=len(resting) - MAX_RESTING_LOGGED,
                )
