"""The demo's view: flow per stage, reliability path, latency, P&L and positions."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from services.common.latency import LatencyRecorder
from services.trading_engine.engine_state import PositionRow
from services.trading_engine.service import EngineSnapshot

STAGES = (
    ("ticks", "market ticks"),
    ("raw", "raw signals"),
    ("validated", "validated signals"),
    ("rejected", "rejected signals"),
    ("placed", "orders placed"),
    ("filled", "orders filled"),
    ("order_rejected", "orders rejected"),
    ("cancelled", "orders cancelled"),
)
RELIABILITY = (
    ("duplicates", "duplicates skipped"),
    ("retries", "retries"),
    ("dead_lettered", "dead letters"),
    ("decode_failures", "undecodable messages"),
    ("commits", "offset commits"),
)
MAX_POSITION_ROWS = 12


@dataclass
class RateWindow:
    """Per-key rates over the last few seconds of samples."""

    span_s: float = 3.0
    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def add(self, counts: dict[str, float]) -> dict[str, float]:
        now = time.monotonic()
        self.samples.append((now, counts))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span_s:
            self.samples.popleft()
        then, old = self.samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return dict.fromkeys(counts, 0.0)
        return {k: (v - old.get(k, 0.0)) / elapsed for k, v in counts.items()}


@dataclass(frozen=True)
class ViewState:
    """Everything one frame of the view shows."""

    header: str
    counts: Mapping[str, float]
    rates: Mapping[str, float]
    snapshot: EngineSnapshot
    latencies: Sequence[tuple[str, LatencyRecorder]]
    chaos: str | None
    memory: str


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _money(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    style = "green" if value >= 0 else "red"
    return f"[{style}]{value:,.2f}[/]"


def positions_table(rows: Sequence[PositionRow]) -> Table:
    """Open positions by namespace, strategy and instrument, with their P&L."""
    table = Table(
        "namespace", "strategy", "instrument", "qty", "avg", "realized", "unrealized",
        title="positions (unrealized at the last tick)",
    )  # fmt: skip
    shown = [r for r in rows if r.quantity][:MAX_POSITION_ROWS]
    for row in shown:
        table.add_row(
            row.namespace,
            row.strategy_id,
            row.instrument,
            f"{row.quantity:,}",
            f"{row.avg_price:,.2f}",
            _money(row.realized),
            _money(row.unrealized),
        )
    hidden = sum(1 for r in rows if r.quantity) - len(shown)
    if hidden > 0:
        table.caption = f"and {hidden} more"
    return table


def render(state: ViewState, *, final: bool = False) -> Group:
    """One frame: header, flow and reliability, latency and P&L, positions, chaos line."""
    flow = Table("stage", "count", "per s", title="pipeline")
    for key, label in STAGES:
        flow.add_row(label, f"{int(state.counts[key]):,}", f"{state.rates.get(key, 0.0):,.1f}")
    reliability = Table("event", "count", title="reliability path")
    for key, label in RELIABILITY:
        reliability.add_row(label, f"{int(state.counts[key]):,}")
    latency = Table("path", "p50", "p99", "samples", title="latency (recent)")
    for label, recorder in state.latencies:
        latency.add_row(
            label,
            _ms(recorder.percentile(0.5)),
            _ms(recorder.percentile(0.99)),
            f"{recorder.count:,}",
        )
    pnl = Table("strategy", "P&L", title="paper P&L, marked to the last tick")
    for strategy, value in sorted(state.snapshot.pnl_by_strategy.items()):
        pnl.add_row(strategy, _money(value))
    title = "summary" if final else "tradestream demo (Ctrl-C to stop)"
    top = Table.grid(padding=(0, 2))
    top.add_row(flow, reliability)
    middle = Table.grid(padding=(0, 2))
    middle.add_row(latency, pnl)
    parts: list[object] = [
        Panel(state.header, title=title),
        top,
        middle,
        positions_table(state.snapshot.positions),
    ]
    parts.append(state.chaos or "fault injection: off (--no-chaos)")
    parts.append(state.memory)
    return Group(*parts)  # type: ignore[arg-type]
