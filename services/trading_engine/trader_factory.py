"""Where the trading engine gets the trader of each namespace from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from core.config.settings import Settings
from core.streaming.topic_names import validate_topic_name
from services.trading_engine.book import Book
from services.trading_engine.ledger import LedgerState, RestingOrder
from services.trading_engine.orders import OrderRequest, OrderResult
from services.trading_engine.paper_trader import (
    DEFAULT_MAX_REMEMBERED_ORDERS,
    DEFAULT_MAX_RESTING_ORDERS,
    DEFAULT_STARTING_CASH,
    Eligible,
    PaperTrader,
    check_trader_parameters,
)


class Trader(Protocol):
    """What the engine needs from a trader: place orders, see ticks, expire, restore, books."""

    @property
    def namespace(self) -> str: ...

    @property
    def starting_cash(self) -> float: ...

    @property
    def sequence(self) -> int: ...

    async def place_order(
        self, order: OrderRequest, last_price: float | None, price_time: datetime | None
    ) -> OrderResult: ...

    def on_tick(
        self, instrument_token: int, price: float, eligible: Eligible | None = None
    ) -> list[OrderResult]: ...

    def expire(
        self, now: datetime | None = None, eligible: Eligible | None = None
    ) -> list[OrderResult]: ...

    def restore(self, state: LedgerState) -> None: ...

    def books(self) -> Mapping[str, Book]: ...

    def resting_orders(self) -> list[OrderResult]: ...

    def resting_entries(self) -> list[RestingOrder]: ...


class TraderFactory(Protocol):
    """A source of one trader per namespace, with a start and an end."""

    async def initialize(self) -> None: ...

    async def shutdown(self) -> None: ...

    def get_trader(self, namespace: str) -> Trader: ...


class TraderFactoryError(RuntimeError):
    """The factory was used before :meth:`initialize` or after :meth:`shutdown`."""


class PaperTraderFactory:
    """Creates a :class:`PaperTrader` per namespace on first use, then reuses it.

    ``initialize`` is required before ``get_trader`` and may be repeated;
    ``shutdown`` is final (a new factory is needed afterwards) and may be
    repeated. The traders stay readable through :meth:`traders` after shutdown,
    for final positions and P&L.
    """

    def __init__(
        self,
        slippage_bps: float = 5.0,
        starting_cash: float = DEFAULT_STARTING_CASH,
        max_price_age_s: float = 60.0,
        clock: Callable[[], datetime] | None = None,
        *,
        resting_order_ttl_s: float | None = None,
        max_resting_orders: int = DEFAULT_MAX_RESTING_ORDERS,
        max_remembered_orders: int = DEFAULT_MAX_REMEMBERED_ORDERS,
    ) -> None:
        check_trader_parameters(slippage_bps, starting_cash, max_price_age_s)
        self._slippage_bps = slippage_bps
        self._starting_cash = starting_cash
        self._max_price_age_s = max_price_age_s
        self._clock = clock
        self._ttl_s = resting_order_ttl_s
        self._max_resting = max_resting_orders
        self._max_remembered = max_remembered_orders
        self._traders: dict[str, PaperTrader] = {}
        self._initialized = False
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], datetime] | None = None
    ) -> PaperTraderFactory:
        """A factory with the trader parameters of ``settings.trading``."""
        trading = settings.trading
        return cls(
            slippage_bps=trading.slippage_bps,
            starting_cash=trading.starting_cash,
            max_price_age_s=trading.max_price_age_s,
            clock=clock,
            resting_order_ttl_s=trading.resting_order_ttl_s,
            max_resting_orders=trading.max_resting_orders,
            max_remembered_orders=trading.remembered_ids,
        )

    @property
    def is_running(self) -> bool:
        """True between :meth:`initialize` and :meth:`shutdown`."""
        return self._initialized and not self._closed

    async def initialize(self) -> None:
        """Make the factory usable."""
        if self._closed:
            raise TraderFactoryError("the trader factory was shut down; create a new one")
        self._initialized = True

    async def shutdown(self) -> None:
        """Stop handing out traders."""
        self._closed = True

    def get_trader(self, namespace: str) -> PaperTrader:
        """The trader of ``namespace``, created on first request."""
        if self._closed:
            raise TraderFactoryError("the trader factory was shut down")
        if not self._initialized:
            raise TraderFactoryError("the trader factory is not initialized; call initialize()")
        trader = self._traders.get(namespace)
        if trader is None:
            trader = PaperTrader(
                validate_topic_name(namespace),
                slippage_bps=self._slippage_bps,
                starting_cash=self._starting_cash,
                max_price_age_s=self._max_price_age_s,
                clock=self._clock,
                max_remembered_orders=self._max_remembered,
                resting_order_ttl_s=self._ttl_s,
                max_resting_orders=self._max_resting,
            )
            self._traders[namespace] = trader
        return trader

    def traders(self) -> dict[str, PaperTrader]:
        """Every trader created so far, by namespace (a copy)."""
        return dict(self._traders)
