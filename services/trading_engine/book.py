"""A strategy's paper book: cash, positions and P&L by the average-cost method.

The same arithmetic serves the live trader, the rebuild of a book from the
``executions`` ledger at start, and ``tradestream positions``, so the three can
never disagree. A fill moves cash by ``-signed quantity x price``; closing part
of a position realizes ``closed quantity x (price - average price)`` (the sign
flipped for shorts); a position that flips side opens at the fill price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Position:
    """Net quantity of one instrument (positive long), its average price and realized P&L."""

    quantity: int = 0
    avg_price: float = 0.0
    realized: float = 0.0

    def unrealized(self, mark: float) -> float:
        """P&L of the open quantity valued at ``mark``."""
        return self.quantity * (mark - self.avg_price)


@dataclass(slots=True)
class Book:
    """One strategy's book on one namespace."""

    cash: float
    realized: float = 0.0
    positions: dict[int, Position] = field(default_factory=dict)
    fills: int = 0

    def apply_fill(self, instrument_token: int, signed_qty: int, price: float) -> None:
        """Move cash and position by one fill and realize P&L on the closed part."""
        self.fills += 1
        self.cash -= signed_qty * price
        pos = self.positions.get(instrument_token)
        if pos is None:
            pos = self.positions[instrument_token] = Position()
        old = pos.quantity
        new = old + signed_qty
        if old == 0 or (old > 0) == (signed_qty > 0):
            pos.avg_price = (pos.avg_price * abs(old) + price * abs(signed_qty)) / abs(new)
        else:
            closed = min(abs(old), abs(signed_qty))
            gain = closed * (price - pos.avg_price) * (1 if old > 0 else -1)
            pos.realized += gain
            self.realized += gain
            if new == 0:
                pos.avg_price = 0.0
            elif (new > 0) != (old > 0):
                pos.avg_price = price
        pos.quantity = new

    def open_positions(self) -> dict[int, Position]:
        """Positions that are not flat."""
        return {token: pos for token, pos in self.positions.items() if pos.quantity}

    def marked_pnl(self, starting_cash: float, marks: Mapping[int, float]) -> float:
        """Cash change plus every open position at its mark; KeyError if a mark is missing."""
        value = self.cash - starting_cash
        for token, pos in self.positions.items():
            if pos.quantity:
                if token not in marks:
                    raise KeyError(f"no mark for instrument {token}")
                value += pos.quantity * marks[token]
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (positions with an open quantity or a realized P&L)."""
        return {
            "cash": self.cash,
            "realized": self.realized,
            "fills": self.fills,
            "positions": {
                str(token): [pos.quantity, pos.avg_price, pos.realized]
                for token, pos in sorted(self.positions.items())
                if pos.quantity or pos.realized
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Book:
        """The book :meth:`to_dict` described."""
        book = cls(cash=float(data["cash"]), realized=float(data["realized"]))
        book.fills = int(data.get("fills", 0))
        for token, (qty, avg, realized) in dict(data["positions"]).items():
            book.positions[int(token)] = Position(int(qty), float(avg), float(realized))
        return book
