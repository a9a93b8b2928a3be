"""``tradestream positions`` and ``tradestream orders show``: a trader's view of the ledger.

Both read the topics of the broker in the settings, commit nothing, and need no
running service: the books are folded from the ``executions`` ledger with the
engine's own arithmetic, marked to the last tick of each instrument.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from core.config.settings import Settings
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.errors import BrokerUnavailableError
from core.streaming.topic_names import validate_topic_name
from core.streaming.topic_reader import scan_topics
from core.streaming.types import FetchedRecord
from services.cli.common import WIDE_COLUMNS, console, fail, load_cli_settings
from services.trading_engine.book import Book
from services.trading_engine.engine_state import routed_namespaces
from services.trading_engine.ledger import decode_envelope, ledger_topics
from services.trading_engine.ledger_store import LedgerRead, read_ledger
from services.trading_engine.restore import PRICE_TAIL, Quote, latest_quotes

orders_app = typer.Typer(help="Look up orders in the ledger.", no_args_is_help=True)

NamespaceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Namespace to read (repeatable; default: the broker namespace and every routed one).",
    ),
]


def _namespaces(settings: Settings, given: Sequence[str] | None) -> list[str]:
    if not given:
        return routed_namespaces(settings)
    for name in given:
        try:
            validate_topic_name(name)
        except ValueError as exc:
            raise fail(f"namespace {name!r}: {exc}", 2) from None
    return list(dict.fromkeys(given))


def _run(coro: Any, what: str) -> Any:
    try:
        return asyncio.run(coro)
    except (BrokerUnavailableError, OSError, TimeoutError) as exc:
        raise fail(f"cannot read {what}: {type(exc).__name__}: {exc}") from None


def _money(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.2f}"


# --------------------------------------------------------------------------- positions


async def _read_positions(settings: Settings, namespaces: list[str]) -> LedgerRead:
    return await read_ledger(
        settings.redpanda,
        namespaces,
        starting_cash=settings.trading.starting_cash,
        remember=settings.trading.remembered_ids,
        extra_tails={TopicNames.MARKET_TICKS: PRICE_TAIL},
    )


def position_rows(
    read: LedgerRead, quotes: Mapping[int, Quote], starting_cash: float
) -> list[dict[str, Any]]:
    """One JSON-ready row per book: cash, P&L, resting orders and its positions."""
    marks = {token: q.price for token, q in quotes.items()}
    rows = []
    for namespace, state in sorted(read.states.items()):
        books = dict(state.books)
        for order in state.resting:
            books.setdefault(order.request.strategy_id, Book(cash=starting_cash))
        for strategy, book in sorted(books.items()):
            try:
                marked = book.marked_pnl(starting_cash, marks)
            except KeyError:
                marked = math.nan
            rows.append(
                {
                    "namespace": namespace,
                    "strategy": strategy,
                    "cash": book.cash,
                    "realized_pnl": book.realized,
                    "marked_pnl": marked,
                    "fills": book.fills,
                    "resting_orders": sum(
                        1 for r in state.resting if r.request.strategy_id == strategy
                    ),
                    "positions": [
                        {
                            "instrument": quotes[token].symbol if token in quotes else str(token),
                            "instrument_token": token,
                            "quantity": pos.quantity,
                            "avg_price": pos.avg_price,
                            "last_price": quotes[token].price if token in quotes else None,
                            "realized_pnl": pos.realized,
                            "unrealized_pnl": pos.unrealized(quotes[token].price)
                            if token in quotes
                            else None,
                        }
                        for token, pos in sorted(book.positions.items())
                        if pos.quantity or pos.realized
                    ],
                }
            )
    return rows


def positions(
    namespace: NamespaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per book.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Never cut a column.")] = False,
) -> None:
    """Positions, cash and P&L (realized, and marked to the last tick) per namespace and strategy.

    Read from the ledger (the orders and executions topics), not from a running engine.
    """
    settings = load_cli_settings()
    names = _namespaces(settings, namespace)
    read: LedgerRead = _run(_read_positions(settings, names), "the ledger")
    quotes = latest_quotes(read.extra.get(TopicNames.MARKET_TICKS, []))
    rows = position_rows(read, quotes, settings.trading.starting_cash)
    if as_json:
        for row in rows:
            typer.echo(orjson.dumps(row).decode())
        return
    if not rows:
        console.print(f"no orders in the ledger of {', '.join(names)}")
        return
    books = Table(title="books (P&L marked to the last tick)")
    for name in ("namespace", "strategy", "cash", "realized P&L", "marked P&L", "fills", "resting"):
        books.add_column(name, overflow="fold", justify="left" if name[0] in "ns" else "right")
    held = Table(title="positions")
    held_columns = (
        "namespace", "strategy", "instrument", "quantity", "avg price", "last", "realized",
        "unrealized",
    )  # fmt: skip
    for name in held_columns:
        held.add_column(name, overflow="fold", justify="left" if name[0] in "nsi" else "right")
    for row in rows:
        books.add_row(
            row["namespace"],
            row["strategy"],
            _money(row["cash"]),
            _money(row["realized_pnl"]),
            _money(row["marked_pnl"]),
            str(row["fills"]),
            str(row["resting_orders"]),
        )
        for pos in row["positions"]:
            last = pos["last_price"]
            unrealized = pos["unrealized_pnl"]
            held.add_row(
                row["namespace"],
                row["strategy"],
                pos["instrument"],
                f"{pos['quantity']:,}",
                f"{pos['avg_price']:,.2f}",
                "n/a" if last is None else f"{last:,.2f}",
                _money(pos["realized_pnl"]),
                "n/a" if unrealized is None else _money(unrealized),
            )
    width = WIDE_COLUMNS if wide else None
    console.print(books, width=width)
    console.print(held, width=width)


# --------------------------------------------------------------------------- orders show


@dataclass(frozen=True)
class TrailEntry:
    """One event of an order's audit trail and where it is stored."""

    topic: str
    partition: int
    offset: int
    envelope: dict[str, Any]

    @property
    def at(self) -> str:
        return str(self.envelope.get("timestamp", ""))

    def summary(self) -> str:
        data = self.envelope.get("data")
        if not isinstance(data, dict):
            return ""
        kind = str(self.envelope.get("type"))
        if kind.startswith("order."):
            parts = [str(data.get("status")), f"{data.get('action')} {data.get('quantity')}"]
            parts.append(f"{data.get('symbol')} {data.get('order_type')}")
            if data.get("limit_price") is not None:
                parts.append(f"limit {data['limit_price']}")
            if data.get("fill_price") is not None:
                parts.append(f"filled at {data['fill_price']:.4f}")
            if data.get("reason"):
                parts.append(str(data["reason"]))
            if data.get("sequence") is not None:
                parts.append(f"seq {data['sequence']}")
            return " | ".join(parts)
        signal = data.get("original_signal", data)
        if isinstance(signal, dict):
            text = f"{signal.get('strategy_id')}: {signal.get('action')} {signal.get('quantity')}"
            text += f" {signal.get('symbol')} {signal.get('order_type', '')}"
            if data.get("reason"):
                text += f" | {data['reason']}"
            return text
        return ""


async def _find_trail(
    settings: Settings, client_order_id: str, namespaces: list[str]
) -> list[TrailEntry]:
    """The order's events, then the signal events of its chain (one pass each)."""
    order_events: list[TrailEntry] = []
    wanted_key = client_order_id.encode()

    def collect_orders(batch: Sequence[FetchedRecord]) -> None:
        for record in batch:
            if record.key == wanted_key:
                envelope = decode_envelope(record)
                if envelope is not None:
                    order_events.append(
                        TrailEntry(record.topic, record.partition, record.offset, envelope)
                    )

    await scan_topics(settings.redpanda, list(ledger_topics(namespaces)), collect_orders)
    if not order_events:
        return []
    wanted_ids = {
        str(e.envelope.get(k)) for e in order_events for k in ("causation_id", "correlation_id")
    }
    signal_events: list[TrailEntry] = []
    topics = TopicMap(settings.broker_namespace)
    signal_topics = [topics.signals_raw(), topics.signals_validated()]

    def collect_signals(batch: Sequence[FetchedRecord]) -> None:
        for record in batch:
            envelope = decode_envelope(record)
            if envelope is not None and str(envelope.get("id")) in wanted_ids:
                signal_events.append(
                    TrailEntry(record.topic, record.partition, record.offset, envelope)
                )
                wanted_ids.add(str(envelope.get("causation_id")))

    for topic in reversed(signal_topics):  # validated first: it names the raw signal
        await scan_topics(settings.redpanda, [topic], collect_signals)
    return sorted(signal_events + order_events, key=lambda e: e.at)


@orders_app.command("show")
def orders_show(
    client_order_id: Annotated[str, typer.Argument(help="The order's client order id.")],
    namespace: NamespaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON envelope per line.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Never cut a column.")] = False,
) -> None:
    """The audit trail of one order: signal -> validation -> order -> fills, with their ids."""
    settings = load_cli_settings()
    names = _namespaces(settings, namespace)
    trail: list[TrailEntry] = _run(_find_trail(settings, client_order_id, names), "the ledger")
    if not trail:
        raise fail(f"no order {client_order_id} in the ledger of {', '.join(names)}")
    if as_json:
        for entry in trail:
            typer.echo(orjson.dumps({"topic": entry.topic, **entry.envelope}).decode())
        return
    table = Table(title=f"order {client_order_id}")
    for name in ("time", "event", "where", "event id", "caused by", "what"):
        table.add_column(name, overflow="fold")
    for entry in trail:
        env = entry.envelope
        table.add_row(
            entry.at,
            str(env.get("type")),
            f"{entry.topic}[{entry.partition}]@{entry.offset}",
            str(env.get("id")),
            str(env.get("causation_id") or ""),
            entry.summary(),
        )
    console.print(table, width=WIDE_COLUMNS if wide else None)
    root = trail[0].envelope.get("correlation_id")
    if root:
        console.print(f"correlation id (the market tick that started the chain): {root}")
