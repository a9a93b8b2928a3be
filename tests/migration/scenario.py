"""Inputs for the engine in either shape, and readers of what it produced.

Inputs are fixed bytes (fixed event ids, times and keys), so two runs read the
same records and their outputs can be compared after taking out what is new on
every send: the output event's own id and timestamp.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from core.schemas.events import (
    EventEnvelope,
    EventType,
    MarketTick,
    OrderType,
    SignalAction,
    TradingSignal,
    ValidatedSignal,
)
from core.schemas.topics import TopicMap
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.testing import StreamTestHarness

OPEN = datetime(2026, 1, 7, 5, 0, tzinfo=UTC)  # a Wednesday, 10:30 in Mumbai
CLOSED = datetime(2026, 1, 10, 5, 0, tzinfo=UTC)  # a Saturday
UNREACHABLE_STRATEGY = "breakout"


def event_id(name: str) -> str:
    """A fixed event id for the input called ``name``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"migration-input/{name}"))


def envelope_bytes(name: str, event_type: EventType, data: dict[str, Any]) -> bytes:
    envelope = EventEnvelope(
        id=event_id(name), type=event_type, timestamp=OPEN, source="signal_validator", data=data
    )
    return orjson.dumps(envelope.model_dump(mode="json"))


def tick(name: str, token: int, symbol: str, price: float) -> tuple[str, bytes]:
    data = MarketTick(instrument_token=token, symbol=symbol, last_price=price, timestamp=OPEN)
    return symbol, envelope_bytes(name, EventType.MARKET_TICK, data.model_dump(mode="json"))


def validated(name: str, **signal: Any) -> tuple[str, bytes]:
    parsed = TradingSignal(signal_id=f"sig-{name}", **signal)
    data = ValidatedSignal(original_signal=parsed, validated_at=OPEN).model_dump(mode="json")
    return parsed.strategy_id, envelope_bytes(name, EventType.VALIDATED_SIGNAL, data)


def signal_fields(n: int, strategy: str = "momentum") -> dict[str, Any]:
    """A MARKET buy of RELIANCE during market hours."""
    return {
        "strategy_id": strategy,
        "instrument_token": 738561,
        "symbol": "RELIANCE",
        "action": SignalAction.BUY,
        "quantity": n + 1,
        "timestamp": OPEN,
    }


TICKS = [
    tick("tick-reliance", 738561, "RELIANCE", 2500.0),
    tick("tick-tcs", 2953217, "TCS", 3900.5),
    tick("tick-zero", 0, "ZERO", 0.0),  # a token and a price of 0 are values
]

SIGNALS = [
    validated("market-buy", **signal_fields(9)),
    validated(
        "limit-sell",
        strategy_id="mean_reversion",
        instrument_token=2953217,
        symbol="TCS",
        action=SignalAction.SELL,
        quantity=5,
        order_type=OrderType.LIMIT,
        price=3950.0,
        timestamp=OPEN,
    ),
    validated("zero-price", **{**signal_fields(0), "instrument_token": 0, "symbol": "ZERO"}),
    validated("no-price", **{**signal_fields(1), "instrument_token": 408065, "symbol": "INFY"}),
    validated("closed", **{**signal_fields(2), "timestamp": CLOSED}),
    validated("router-away", **signal_fields(3, UNREACHABLE_STRATEGY)),
]

DUPLICATE = SIGNALS[0]  # the same record again: dedup skips it
MALFORMED = (
    "momentum",
    envelope_bytes(
        "malformed",
        EventType.VALIDATED_SIGNAL,
        {"original_signal": {"strategy_id": "momentum", "symbol": "RELIANCE"}},
    ),
)
UNDECODABLE = ("momentum", b"{not json")


async def publish(harness: StreamTestHarness, topic: str, records: list[tuple[str, bytes]]) -> None:
    for key, value in records:
        await harness.publish_raw(topic, value, key=key.encode())


async def feed(harness: StreamTestHarness, topics: TopicMap, ticks_topic: str) -> None:
    """Ticks first (and handled), then signals, a duplicate and two bad records."""
    await publish(harness, ticks_topic, TICKS)
    await harness.wait_idle(timeout_s=30)
    await publish(harness, topics.signals_validated(), [*SIGNALS, DUPLICATE, MALFORMED])
    await publish(harness, topics.signals_validated(), [UNDECODABLE])
    await harness.wait_idle(timeout_s=30)


@dataclass(frozen=True)
class Outputs:
    """What one run produced, with run-specific names replaced by placeholders."""

    events: list[tuple[str, ...]]
    dead_letters: list[tuple[str, ...]]


def _relative(text: str, namespace: str) -> str:
    return text.replace(namespace, "<ns>")


async def outputs(harness: StreamTestHarness, namespaces: list[str], main: str) -> Outputs:
    """Every event on the engine's output topics and every dead letter of its input."""
    events: list[tuple[str, ...]] = []
    for namespace in namespaces:
        topics = TopicMap(namespace)
        written = [topics.orders(), topics.executions()]
        if namespace == main:
            written.append(topics.signals_rejected())  # rejections go to the engine's own
        for topic in written:
            for event in await harness.read(topic):
                events.append(
                    (
                        _relative(topic, main),
                        _relative(
                            orjson.dumps(event["data"], option=orjson.OPT_SORT_KEYS).decode(), main
                        ),
                        str(event["type"]),
                        str(event["source"]),
                        str(event["correlation_id"]),
                        str(event["causation_id"]),
                    )
                )
    dead = []
    for letter in await harness.read_dead_letters(TopicMap(main).signals_validated()):
        h = letter.headers
        dead.append(
            (
                repr(letter.key),
                repr(letter.value),
                str(h.get("dlq.exception.type")),
                str(h.get("dlq.attempts")),
                _relative(str(h.get("dlq.original.topic")), main),
                str(h.get("dlq.original.partition")),
                str(h.get("dlq.original.offset")),
                str(h.get("dlq.consumer.group")).replace(main, "<ns>"),
            )
        )
    return Outputs(sorted(events), sorted(dead))


def metric(orchestrator: ServiceOrchestrator, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    registries: list[CollectorRegistry] = orchestrator.registries()
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
    return total
