"""The trading engine's Prometheus metrics, in a registry of its own.

Counters and latency histograms are updated as events happen. Positions, cash
and P&L are gauges read from the books when ``/metrics`` is scraped (a custom
collector), so keeping them costs nothing per fill and they are never stale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.latency import LatencyRecorder
from services.trading_engine.book import Book


@dataclass(frozen=True)
class BookView:
    """One strategy's book on one namespace, as the collector reads it."""

    namespace: str
    strategy_id: str
    book: Book
    starting_cash: float


class BookSource(Protocol):
    """What the collector reads: the books, the marks, names and resting counts."""

    def book_views(self) -> Iterable[BookView]: ...

    def marks(self) -> Mapping[int, float]: ...

    def instrument_name(self, token: int) -> str: ...

    def resting_counts(self) -> Mapping[str, int]: ...


class BookCollector(Collector):
    """Position, average price, cash and P&L gauges, computed at scrape time."""

    def __init__(self, source: BookSource, service: str) -> None:
        self._source = source
        self._service = service

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "namespace", "strategy", "instrument"]
        position = GaugeMetricFamily(
            "tradestream_trading_position", "Net quantity held (negative: short).", labels=labels
        )
        avg_price = GaugeMetricFamily(
            "tradestream_trading_position_avg_price",
            "Average price of the open quantity.",
            labels=labels,
        )
        realized = GaugeMetricFamily(
            "tradestream_trading_realized_pnl", "P&L locked in by closing trades.", labels=labels
        )
        unrealized = GaugeMetricFamily(
            "tradestream_trading_unrealized_pnl",
            "Open quantity valued at the last price, minus its cost (NaN without a price).",
            labels=labels,
        )
        book_labels = ["service", "namespace", "strategy"]
        cash = GaugeMetricFamily(
            "tradestream_trading_cash", "Cash of the book.", labels=book_labels
        )
        marked = GaugeMetricFamily(
            "tradestream_trading_marked_pnl",
            "Book P&L with open positions at the last price (NaN if one has no price).",
            labels=book_labels,
        )
        resting = GaugeMetricFamily(
            "tradestream_trading_resting_orders",
            "LIMIT orders resting on the trader.",
            labels=["service", "namespace"],
        )
        marks = self._source.marks()
        for view in self._source.book_views():
            head = [self._service, view.namespace, view.strategy_id]
            for token, pos in sorted(view.book.positions.items()):
                row = [*head, self._source.instrument_name(token)]
                position.add_metric(row, pos.quantity)
                avg_price.add_metric(row, pos.avg_price)
                realized.add_metric(row, pos.realized)
                mark = marks.get(token)
                unrealized.add_metric(row, math.nan if mark is None else pos.unrealized(mark))
            cash.add_metric(head, view.book.cash)
            try:
                marked.add_metric(head, view.book.marked_pnl(view.starting_cash, marks))
            except KeyError:
                marked.add_metric(head, math.nan)
        for namespace, count in sorted(self._source.resting_counts().items()):
            resting.add_metric([self._service, namespace], count)
        yield from (position, avg_price, realized, unrealized, cash, marked, resting)


class EngineMetrics:
    """Counters, latency histograms and the book gauges of one engine."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.signals_rejected = Counter(
            "tradestream_trading_signals_rejected_total",
            "Signals the trading engine refused, by reason kind.",
            ("service", "reason"),
            registry=self.registry,
        )
        self.orders = Counter(
            "tradestream_trading_orders_total",
            "Order outcomes on traders, by namespace and status.",
            ("service", "namespace", "status"),
            registry=self.registry,
        )
        self.signal_to_order = LatencyRecorder(
            "tradestream_trading_signal_to_order_seconds",
            "From a strategy emitting a signal to the engine placing (or rejecting) its order.",
            self.registry,
            service,
        )
        self.order_to_fill = LatencyRecorder(
            "tradestream_trading_order_to_fill_seconds",
            "From an order's placement to its fill (0 for a MARKET order filled at once).",
            self.registry,
            service,
        )

    def watch_books(self, source: BookSource) -> None:
        """Serve ``source``'s books as gauges."""
        self.registry.register(BookCollector(source, self.service))
