"""What the engine reads back at start: the ledger, its recent rejections, the last prices.

The ledger topics are created here (before anything is read or written) with
unlimited retention: they are the record the books are rebuilt from, so Kafka's
default seven-day retention must not delete old fills. Topics that already
exist are left as they are; ``tradestream topics ensure`` creates them the same
way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from core.config.settings import Settings
from core.schemas.events import EventType, MarketTick
from core.schemas.topics import TopicMap, TopicNames
from core.streaming.clients import create_admin
from core.streaming.types import TopicPartition, TopicSpec
from services.trading_engine.ledger import ledger_topics
from services.trading_engine.ledger_store import (
    SNAPSHOT_TOPIC_CONFIGS,
    LedgerRead,
    read_ledger,
    snapshot_topic,
)

LEDGER_TOPIC_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1"}
ENGINE_STAGE = "trading_engine"
PRICE_TAIL = 200
"""Ticks per partition read back for the last prices (a few per instrument suffice)."""


def ledger_topic_specs(
    settings: Settings, namespaces: Iterable[str], partitions: int | None = None
) -> list[TopicSpec]:
    """The ledger topics of ``namespaces`` (unlimited retention) and their snapshot topics."""
    cfg = settings.redpanda
    names = list(namespaces)
    specs = [
        TopicSpec(
            topic,
            partitions or cfg.topic_partitions,
            cfg.topic_replication_factor,
            dict(LEDGER_TOPIC_CONFIGS),
        )
        for topic in ledger_topics(names)
    ]
    specs.extend(
        TopicSpec(snapshot_topic(ns), 1, cfg.topic_replication_factor, dict(SNAPSHOT_TOPIC_CONFIGS))
        for ns in names
    )
    return specs


async def ensure_ledger_topics(settings: Settings, namespaces: Iterable[str]) -> list[str]:
    """Create the missing ledger topics of ``namespaces``; returns those created."""
    admin = create_admin(settings.redpanda)
    await admin.start()
    try:
        return await admin.create_topics(ledger_topic_specs(settings, namespaces))
    finally:
        await admin.close()


@dataclass(frozen=True)
class Quote:
    """The last price of an instrument, when it traded, and its symbol."""

    price: float
    at: datetime
    symbol: str = ""


@dataclass
class EngineHistory:
    """The engine's past as its topics record it."""

    ledger: LedgerRead
    rejected_signal_ids: list[str] = field(default_factory=list)
    quotes: dict[int, Quote] = field(default_factory=dict)

    @property
    def ends(self) -> dict[TopicPartition, int]:
        """End offsets of the ledger partitions the books were rebuilt up to."""
        return self.ledger.ends


def latest_quotes(envelopes: Sequence[Mapping[str, Any]]) -> dict[int, Quote]:
    """The newest valid tick of each instrument among ``envelopes``."""
    quotes: dict[int, Quote] = {}
    for envelope in envelopes:
        if envelope.get("type") != EventType.MARKET_TICK.value:
            continue
        try:
            tick = MarketTick.model_validate(envelope.get("data"))
        except ValidationError:
            continue
        if not math.isfinite(tick.last_price):
            continue
        known = quotes.get(tick.instrument_token)
        if known is None or tick.timestamp >= known.at:
            quotes[tick.instrument_token] = Quote(tick.last_price, tick.timestamp, tick.symbol)
    return quotes


def engine_rejections(envelopes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Signal ids the engine itself rejected, oldest first."""
    ids: list[str] = []
    for envelope in envelopes:
        data = envelope.get("data")
        if envelope.get("type") != EventType.REJECTED_SIGNAL.value or not isinstance(data, dict):
            continue
        signal_id = data.get("signal_id")
        if data.get("stage") == ENGINE_STAGE and isinstance(signal_id, str) and signal_id:
            ids.append(signal_id)
    return ids


async def read_engine_history(
    settings: Settings,
    namespaces: Sequence[str],
    *,
    remember: int,
    timeout_s: float = 120.0,
) -> EngineHistory:
    """Create the ledger topics if missing, then read ledger, rejections and prices in one pass."""
    await ensure_ledger_topics(settings, namespaces)
    partitions = max(1, settings.redpanda.topic_partitions)
    rejected = TopicMap(settings.broker_namespace).signals_rejected()
    tails = {
        rejected: math.ceil(remember / partitions),
        TopicNames.MARKET_TICKS: min(settings.trading.warmup_ticks, PRICE_TAIL),
    }
    ledger = await read_ledger(
        settings.redpanda,
        namespaces,
        starting_cash=settings.trading.starting_cash,
        remember=remember,
        extra_tails=tails,
        timeout_s=timeout_s,
    )
    return EngineHistory(
        ledger,
        engine_rejections(ledger.extra.get(rejected, [])),
        latest_quotes(ledger.extra.get(TopicNames.MARKET_TICKS, [])),
    )
