"""Signal validation: raw strategy signals become validated or rejected signals.

Checks, in order, each refusal naming its reason:

1. schema: the payload must be a :class:`TradingSignal`. A malformed signal is
   business input, not a poison message: it is rejected with a summary of the
   schema errors instead of being dead-lettered;
2. duplicate signal id: each signal id gets one verdict; a later signal with an
   id already decided, carried by another event, is refused as
   ``"duplicate signal id"``. This is business duplicate detection on
   ``signal_id`` (a strategy re-emitting a signal under a new event id), distinct
   from the framework's dedup on the event id. The same event seen again (a
   redelivery the framework's dedup did not catch, or dedup turned off) gets no
   second verdict. Ids are remembered with their event id in a bounded LRU;
3. known instrument: the symbol is in ``settings.trading.instruments`` and the
   token is the one configured for it;
4. quantity at most ``max_quantity``;
5. notional (quantity x reference price) at most ``max_notional``. The reference
   price is the signal's own price, else the last tick seen for the instrument
   (the validator consumes ticks for this). With neither, the signal is refused:
   a risk limit that cannot be checked is not passed.

A valid signal goes out as ``ValidatedSignal`` (``VALIDATED_SIGNAL``) on
``signals_validated()``, an invalid one as ``RejectedSignal(stage="validator")``
(``REJECTED_SIGNAL``) on ``signals_rejected()``, both keyed by strategy id, both
in the raw signal's correlation chain. A value on either input topic that is not
an envelope of the expected type is dead-lettered with the reason.

Across restarts: at start the validator reads back the tail of its own verdicts
(``signals.validated`` and its ``signals.rejected``), whose causation id is the
raw signal's event id, to refill the signal id registry, and the last ticks for
the notional check; so a raw signal redelivered after a crash gets no second
verdict.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

from core.config.settings import RedpandaSettings, Settings
from core.schemas.events import (
    EventType,
    MarketTick,
    RejectedSignal,
    TradingSignal,
    ValidatedSignal,
)
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import Redis
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from services.common.envelopes import envelope_problem, require_event
from services.common.history import read_recent, restoring

logger = logging.getLogger(__name__)

SERVICE_NAME = "signal_validator"
STAGE: Final = "validator"
DUPLICATE_SIGNAL_ID = "duplicate signal id"
DEFAULT_REMEMBERED_IDS = 20_000
MAX_REASON_CHARS = 500


def schema_error_summary(exc: ValidationError, max_errors: int = 3) -> str:
    """``invalid signal: field: message; ...`` for the first ``max_errors`` errors."""
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for err in errors[:max_errors]:
        where = ".".join(str(p) for p in err["loc"]) or "signal"
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    more = len(errors) - max_errors
    if more > 0:
        parts.append(f"and {more} more")
    return ("invalid signal: " + "; ".join(parts))[:MAX_REASON_CHARS]


class Claim(StrEnum):
    """What a signal id's sighting is: first, the same event again, or a reuse."""

    NEW = "new"
    REDELIVERY = "redelivery"
    DUPLICATE = "duplicate"


class SignalRules:
    """The stateless business checks of one signal: instrument, quantity, notional."""

    def __init__(
        self, instruments: Mapping[str, int], max_quantity: int, max_notional: float
    ) -> None:
        if max_quantity < 1 or not (math.isfinite(max_notional) and max_notional > 0):
            raise ValueError("max_quantity must be >= 1 and max_notional positive and finite")
        self.instruments = dict(instruments)
        self.max_quantity = max_quantity
        self.max_notional = max_notional

    @classmethod
    def from_settings(cls, settings: Settings) -> SignalRules:
        """Rules with the instruments and limits of ``settings.trading``."""
        trading = settings.trading
        return cls(trading.instruments, trading.max_quantity, trading.max_notional)

    def check(self, signal: TradingSignal, reference_price: float | None) -> str | None:
        """The reason to refuse ``signal``, or None if it passes.

        ``reference_price`` values the order for the notional limit when the
        signal carries no price of its own.
        """
        token = self.instruments.get(signal.symbol)
        if token is None:
            return f"unknown instrument {signal.symbol}"
        if token != signal.instrument_token:
            return (
                f"instrument token {signal.instrument_token} does not match "
                f"{signal.symbol} ({token})"
            )
        if signal.quantity > self.max_quantity:
            return f"quantity {signal.quantity} above max {self.max_quantity}"
        price = signal.price if signal.price is not None else reference_price
        if price is None:
            return f"no reference price for {signal.symbol} to check notional"
        notional = signal.quantity * price
        if notional > self.max_notional:
            return f"notional {notional:.2f} above max {self.max_notional:.2f}"
        return None


class SignalIdRegistry:
    """Signal ids that already got a verdict, with the event that carried each.

    Bounded: the least recently seen id is forgotten first.
    """

    def __init__(self, max_ids: int = DEFAULT_REMEMBERED_IDS) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self.max_ids = max_ids
        self._ids: OrderedDict[str, str | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, signal_id: object) -> bool:
        return signal_id in self._ids

    def reserve(self, signal_id: str, event_id: str | None = None) -> Claim:
        """Record ``signal_id`` as carried by ``event_id``, unless it is known.

        Returns :attr:`Claim.NEW` for a first sighting, :attr:`Claim.REDELIVERY`
        when the same event carried it before, :attr:`Claim.DUPLICATE` otherwise.
        """
        if signal_id in self._ids:
            self._ids.move_to_end(signal_id)
            first = self._ids[signal_id]
            if event_id is not None and first == event_id:
                return Claim.REDELIVERY
            return Claim.DUPLICATE
        self._ids[signal_id] = event_id
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)
        return Claim.NEW

    def release(self, signal_id: str) -> None:
        """Forget ``signal_id`` (its verdict could not be published)."""
        self._ids.pop(signal_id, None)


@dataclass
class ValidatorStats:
    """Counters of verdicts."""

    validated: int = 0
    rejected: int = 0
    schema_errors: int = 0
    duplicate_signal_ids: int = 0
    redeliveries: int = 0
    ticks_handled: int = 0
    restored_ids: int = 0


class SignalValidatorService:
    """Consumes raw signals (and ticks, for notional), publishes verdicts."""

    def __init__(
        self,
        config: RedpandaSettings | None,
        settings: Settings,
        redis_client: Redis | None = None,
        *,
        max_remembered_ids: int | None = None,
    ) -> None:
        self.settings = settings
        self.rules = SignalRules.from_settings(settings)
        self.seen_ids = SignalIdRegistry(max_remembered_ids or settings.trading.remembered_ids)
        self.topics = TopicMap(settings.broker_namespace)
        self.last_prices: dict[int, float] = {}
        self.stats = ValidatorStats()
        prefix = settings.redpanda.group_id_prefix
        self.orchestrator: ServiceOrchestrator = (
            StreamServiceBuilder(SERVICE_NAME, config, settings)
            .with_redis(redis_client)
            # Verdicts / orders and executions commit with the input offsets, in one transaction.
            .with_reliability_defaults(processing_guarantee="exactly_once")
            .add_producer(topics=[self.topics.signals_validated(), self.topics.signals_rejected()])
            .add_consumer_handler(
                [self.topics.signals_raw()],
                f"{prefix}.{SERVICE_NAME}.signals",
                self._handle_raw_signal,
            )
            .add_consumer_handler(
                [TopicNames.MARKET_TICKS],
                f"{prefix}.{SERVICE_NAME}.ticks",
                self._handle_market_tick,
            )
            .build()
        )
        self.publisher = self.orchestrator.producer

    async def start(self) -> None:
        """Refill the signal id registry and prices from the topics, then consume."""
        if self.settings.trading.restore_on_start:
            await restoring("restoring recent verdicts", self.settings, self.restore)
        await self.orchestrator.start()

    async def restore(self) -> None:
        """Read back the recent verdicts (ids with their raw event ids) and the last ticks."""
        partitions = max(1, self.settings.redpanda.topic_partitions)
        verdicts = math.ceil(self.seen_ids.max_ids / partitions)
        recent = await read_recent(
            self.settings.redpanda,
            {
                self.topics.signals_validated(): verdicts,
                self.topics.signals_rejected(): verdicts,
                TopicNames.MARKET_TICKS: min(self.settings.trading.warmup_ticks, 200),
            },
        )
        restored = self.restore_verdicts(
            recent[self.topics.signals_validated()] + recent[self.topics.signals_rejected()]
        )
        for envelope in recent[TopicNames.MARKET_TICKS]:
            data = envelope.get("data")
            if envelope_problem(envelope) is None and envelope["type"] == EventType.MARKET_TICK:
                try:
                    tick = MarketTick.model_validate(data)
                except ValidationError:
                    continue
                self.last_prices[tick.instrument_token] = tick.last_price
        logger.info(
            "%s: %d signal id(s) and %d price(s) restored",
            SERVICE_NAME,
            restored,
            len(self.last_prices),
        )

    def restore_verdicts(self, envelopes: Sequence[Mapping[str, Any]]) -> int:
        """Remember the signal ids of past verdicts, oldest first; returns how many."""
        found: list[tuple[str, str, str | None]] = []
        for envelope in envelopes:
            if envelope_problem(envelope) is not None:
                continue
            data = envelope["data"]
            if envelope["type"] == EventType.VALIDATED_SIGNAL:
                original = data.get("original_signal")
                signal_id = original.get("signal_id") if isinstance(original, dict) else None
            elif envelope["type"] == EventType.REJECTED_SIGNAL and data.get("stage") == STAGE:
                signal_id = data.get("signal_id")
            else:
                continue
            if isinstance(signal_id, str) and signal_id:
                causation = envelope.get("causation_id")
                stamp = str(envelope.get("timestamp", ""))
                found.append((stamp, signal_id, causation if isinstance(causation, str) else None))
        found.sort(key=lambda item: item[0])
        for _, signal_id, event_id in found:
            self.seen_ids.reserve(signal_id, event_id)
        self.stats.restored_ids += len(found)
        return len(found)

    async def stop(self) -> None:
        """Drain and stop."""
        await self.orchestrator.stop()

    async def _handle_raw_signal(self, message: dict[str, Any]) -> None:
        """Publish one verdict for one raw signal."""
        data = require_event(
            message, EventType.RAW_SIGNAL.value, self.topics.signals_raw(), data_object=False
        )
        try:
            signal = TradingSignal.model_validate(data)
        except ValidationError as exc:
            self.stats.schema_errors += 1
            await self._reject_malformed(data, schema_error_summary(exc))
            return
        event_id = message.get("id")
        claim = self.seen_ids.reserve(
            signal.signal_id, event_id if isinstance(event_id, str) else None
        )
        if claim is Claim.REDELIVERY:
            self.stats.redeliveries += 1
            return
        if claim is Claim.DUPLICATE:
            self.stats.duplicate_signal_ids += 1
            await self._reject(signal, DUPLICATE_SIGNAL_ID)
            return
        try:
            reason = self.rules.check(signal, self.last_prices.get(signal.instrument_token))
            if reason is None:
                await self.publisher.send(
                    self.topics.signals_validated(),
                    signal.strategy_id,
                    ValidatedSignal(original_signal=signal),
                    EventType.VALIDATED_SIGNAL,
                )
                self.stats.validated += 1
            else:
                await self._reject(signal, reason)
        except BaseException:
            self.seen_ids.release(signal.signal_id)
            raise

    async def _handle_market_tick(self, message: dict[str, Any]) -> None:
        """Remember the last price per instrument, for the notional check."""
        data = require_event(message, EventType.MARKET_TICK.value, TopicNames.MARKET_TICKS)
        tick = MarketTick.model_validate(data)
        self.last_prices[tick.instrument_token] = tick.last_price
        self.stats.ticks_handled += 1

    async def _reject(self, signal: TradingSignal, reason: str) -> None:
        await self._publish_rejection(
            RejectedSignal(
                signal_id=signal.signal_id,
                strategy_id=signal.strategy_id,
                stage=STAGE,
                reason=reason,
                original_signal=signal.model_dump(mode="json"),
            )
        )

    async def _reject_malformed(self, data: Any, reason: str) -> None:
        fields = data if isinstance(data, dict) else {}
        signal_id = fields.get("signal_id")
        strategy_id = fields.get("strategy_id")
        await self._publish_rejection(
            RejectedSignal(
                signal_id=signal_id if isinstance(signal_id, str) and signal_id else None,
                strategy_id=strategy_id if isinstance(strategy_id, str) and strategy_id else None,
                stage=STAGE,
                reason=reason,
                original_signal=fields,
            )
        )

    async def _publish_rejection(self, rejection: RejectedSignal) -> None:
        await self.publisher.send(
            self.topics.signals_rejected(),
            rejection.strategy_id,
            rejection,
            EventType.REJECTED_SIGNAL,
        )
        self.stats.rejected += 1
