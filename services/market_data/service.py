"""A simulated market-data feed: random-walk ticks published to ``market.ticks``.

Prices move in whole ticks of 0.05 (the NSE equity tick size), start near each
symbol's recent level and never fall below one tick. Instruments are visited in
turn, so ``rate_per_s`` is the total rate over all of them. Each tick starts its
own correlation chain, which the signals derived from it continue. Ticks are keyed
by instrument token, so every instrument's ticks stay in order on one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from datetime import datetime

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import EventType, MarketTick, utc_now
from core.schemas.topics import TopicNames
from core.streaming.correlation import CorrelationContext
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

logger = logging.getLogger(__name__)

SERVICE_NAME = "market_data"
TICK_SIZE = 0.05
DEFAULT_START_PRICE = 1000.0
START_PRICES: dict[str, float] = {
    "RELIANCE": 2900.0,
    "TCS": 3900.0,
    "INFY": 1500.0,
    "HDFCBANK": 1650.0,
    "ICICIBANK": 1250.0,
}
_SEND_RETRY_INITIAL_S = 0.1
_SEND_RETRY_MAX_S = 5.0


def round_to_tick(price: float, tick_size: float = TICK_SIZE) -> float:
    """``price`` on the tick grid, never below one tick."""
    steps = max(1, round(price / tick_size))
    return round(steps * tick_size, 2)


class RandomWalk:
    """Per-instrument random walk in whole ticks; deterministic for a given seed.

    Each step moves the price by a normally distributed number of ticks whose
    standard deviation is ``volatility_bps`` of the price (at least one tick).
    """

    def __init__(
        self,
        instruments: Mapping[str, int],
        *,
        seed: int | None = None,
        volatility_bps: float = 5.0,
        start_prices: Mapping[str, float] | None = None,
    ) -> None:
        if not instruments:
            raise ValueError("at least one instrument is needed")
        if volatility_bps < 0:
            raise ValueError(f"volatility_bps must be >= 0, got {volatility_bps}")
        starts = {**START_PRICES, **(start_prices or {})}
        self._rng = random.Random(seed)
        self._volatility = volatility_bps / 10_000
        self._order = list(instruments.items())
        self._next = 0
        self.prices: dict[str, float] = {
            symbol: round_to_tick(starts.get(symbol, DEFAULT_START_PRICE)) for symbol in instruments
        }

    def step(self, price: float) -> float:
        """The next price after ``price``."""
        sigma_ticks = max(1.0, price * self._volatility / TICK_SIZE)
        moved = round(self._rng.gauss(0.0, sigma_ticks))
        return round_to_tick(price + moved * TICK_SIZE)

    def next_tick(self, at: datetime) -> MarketTick:
        """Advance the next instrument in turn and return its tick, stamped ``at``."""
        symbol, token = self._order[self._next]
        self._next = (self._next + 1) % len(self._order)
        price = self.step(self.prices[symbol])
        self.prices[symbol] = price
        return MarketTick(
            instrument_token=token,
            symbol=symbol,
            last_price=price,
            volume=self._rng.randint(1, 500),
            timestamp=at,
        )


class MarketDataFeedService:
    """Publishes simulated ticks at a steady rate until stopped (or ``max_ticks``)."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        *,
        instruments: Mapping[str, int] | None = None,
        rate_per_s: float | None = None,
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
        max_ticks: int | None = None,
    ) -> None:
        rate = settings.trading.tick_rate_per_s if rate_per_s is None else rate_per_s
        if not rate > 0:
            raise ValueError(f"rate_per_s must be positive, got {rate}")
        if max_ticks is not None and max_ticks < 0:
            raise ValueError(f"max_ticks must be >= 0, got {max_ticks}")
        self.settings = settings
        self.rate_per_s = rate
        self.max_ticks = max_ticks
        self.walk = RandomWalk(
            instruments if instruments is not None else settings.trading.instruments, seed=seed
        )
        self._clock = clock or utc_now
        self.ticks_sent = 0
        self.send_failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .add_producer(topics=[TopicNames.MARKET_TICKS])
            .build()
        )

    @property
    def is_running(self) -> bool:
        """True while the feed task is publishing."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the producer, then the feed task. Idempotent."""
        await self.orchestrator.start()
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="market-data-feed")

    async def stop(self) -> None:
        """End the feed after the tick in progress, then stop the producer."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except Exception:
                logger.exception("%s: feed task failed", SERVICE_NAME)
        await self.orchestrator.stop()

    async def wait_finished(self) -> None:
        """Wait until the feed task ends (after ``max_ticks`` or a stop)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate_per_s
        next_at = loop.time()
        while not self._stopping.is_set():
            if self.max_ticks is not None and self.ticks_sent >= self.max_ticks:
                return
            await self._send_one()
            next_at += interval
            delay = next_at - loop.time()
            if delay < -1.0:
                next_at = loop.time()
            elif delay > 0:
                await self._sleep(delay)

    async def _send_one(self) -> None:
        """Publish one tick, retrying a failed send with backoff until stopped."""
        tick = self.walk.next_tick(self._clock())
        backoff = _SEND_RETRY_INITIAL_S
        with CorrelationContext.scope(SERVICE_NAME, "publish_tick"):
            while not self._stopping.is_set():
                try:
                    await self.orchestrator.producer.send(
                        TopicNames.MARKET_TICKS,
                        str(tick.instrument_token),
                        tick,
                        EventType.MARKET_TICK,
                    )
                except Exception:
                    self.send_failures += 1
                    logger.exception("%s: tick send failed, retrying", SERVICE_NAME)
                    await self._sleep(backoff)
                    backoff = min(_SEND_RETRY_MAX_S, backoff * 2)
                    continue
                self.ticks_sent += 1
                return

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` or until stop is requested, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
