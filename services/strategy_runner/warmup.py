"""Strategy state across restarts: replay the recent ticks through the strategies at start.

A strategy's state (the last price and the current run per instrument) is a
function of the ticks it saw, and it forgets everything older than the last
change of direction. So at start the runner reads the last ``warmup_ticks``
ticks of each partition and feeds them to its strategies without publishing,
which gives the state an uninterrupted runner would have at the end of the
topic. It also reads the recent raw signals, to know which signals of those
ticks were already published.

While consuming afterwards, for each instrument:

* a tick the warm-up replayed (a redelivery, or a tick published while the
  runner was down) updates nothing; the signals the warm-up computed for it
  that were never published are published now, with their derived ids, if the
  tick was at most ``max_signal_age_s`` old at start (a signal from an older
  tick would trade on a stale price: it is dropped and counted);
* a tick older than the warm-up's last one (a backlog beyond the warm-up
  window) updates nothing and emits nothing: it is stale;
* the first newer tick ends the warm-up for the instrument (its bookkeeping is
  dropped) and is handled normally.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import ValidationError

from core.config.settings import RedpandaSettings
from core.schemas.events import EventType, MarketTick, TradingSignal, utc_now
from core.schemas.topics import TopicNames
from services.common.envelopes import envelope_problem
from services.common.history import read_recent

logger = logging.getLogger(__name__)

RunStrategies = Callable[[MarketTick, str], list[TradingSignal]]


class Warmup:
    """The warm-up of one runner: what it replayed, and what it still owes per instrument."""

    def __init__(
        self,
        run: RunStrategies,
        signals_topic: str,
        max_signal_age_s: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._run = run
        self._signals_topic = signals_topic
        self._max_age = timedelta(seconds=max_signal_age_s)
        self._clock = clock
        self._owed: dict[int, OrderedDict[str, list[TradingSignal]]] = {}
        self._until: dict[int, datetime] = {}
        self.replayed = 0
        self.stale_skipped = 0
        self.stale_signals = 0

    @property
    def active_instruments(self) -> int:
        """Instruments whose warm-up has not ended yet."""
        return len(self._until)

    async def run(self, config: RedpandaSettings, per_partition: int) -> None:
        """Replay the last ``per_partition`` ticks of each partition (no publishing)."""
        if per_partition <= 0:
            return
        recent = await read_recent(
            config, {TopicNames.MARKET_TICKS: per_partition, self._signals_topic: per_partition}
        )
        published = {
            str(env["data"].get("signal_id"))
            for env in recent[self._signals_topic]
            if envelope_problem(env) is None
        }
        owed = 0
        oldest = self._clock() - self._max_age
        for envelope in recent[TopicNames.MARKET_TICKS]:
            if envelope_problem(envelope) is not None:
                continue
            if envelope["type"] != EventType.MARKET_TICK.value:
                continue
            try:
                tick = MarketTick.model_validate(envelope["data"])
            except ValidationError:
                continue
            token = tick.instrument_token
            until = self._until.get(token)
            if until is not None and tick.timestamp < until:
                continue
            signals = self._run(tick, str(envelope["id"]))
            unpublished = [s for s in signals if s.signal_id not in published]
            if unpublished and tick.timestamp < oldest:
                self.stale_signals += len(unpublished)
                unpublished = []
            owed += len(unpublished)
            self._owed.setdefault(token, OrderedDict())[str(envelope["id"])] = unpublished
            self._until[token] = tick.timestamp
            self.replayed += 1
        logger.info(
            "strategy warm-up: %d tick(s) replayed over %d instrument(s), "
            "%d signal(s) of them not published yet, %d too old to publish",
            self.replayed,
            len(self._until),
            owed,
            self.stale_signals,
        )

    def take(self, tick_event_id: str, tick: MarketTick) -> list[TradingSignal] | None:
        """None for a tick to handle normally; else the signals still owed for it (maybe none)."""
        token = tick.instrument_token
        until = self._until.get(token)
        if until is None:
            return None
        owed = self._owed.get(token)
        if owed is not None and tick_event_id in owed:
            return owed.pop(tick_event_id)
        if tick.timestamp <= until:
            self.stale_skipped += 1
            return []
        self._owed.pop(token, None)
        del self._until[token]
        return None
