"""Reading the ledger back, from the last snapshot on, and writing snapshots of it.

A snapshot is one ``ledger.snapshot`` event per namespace on
``<ns>.ledger.snapshots`` (compacted, one partition, keyed by namespace): the
books, the resting orders and the last sequence number, with the ledger offsets
it covers (``ends``). The engine writes one every ``SNAPSHOT_EVERY`` published
ledger events, at a moment when everything it applied is acknowledged, so the
state and the offsets agree.

Reading: the latest snapshot of each namespace gives the starting books and
resting orders; the ledger is then read from the snapshot's offsets on (events
folded on top), plus the records just before them, read only to refill the
recent order and signal ids. Without a snapshot, or with one whose offsets lie
beyond the topic's end (the topic was recreated), the whole ledger is folded.
Restart time thus depends on the activity since the last snapshot, not on the
age of the ledger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from core.config.settings import RedpandaSettings
from core.schemas.events import OrderEvent
from core.streaming.topic_names import validate_topic_name
from core.streaming.topic_reader import scan_topics
from core.streaming.types import FetchedRecord, TopicPartition
from services.trading_engine.book import Book
from services.trading_engine.ledger import (
    LedgerFold,
    LedgerState,
    RestingOrder,
    decode_envelope,
    ledger_topics,
    request_of,
)

logger = logging.getLogger(__name__)

SNAPSHOT_TYPE = "ledger.snapshot"
SNAPSHOT_VERSION = 1
SNAPSHOT_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.ms": "3600000"}
MAX_SNAPSHOT_BYTES = 900_000


def snapshot_topic(namespace: str) -> str:
    """Where ``namespace``'s ledger snapshots go."""
    return validate_topic_name(f"{namespace}.ledger.snapshots")


@dataclass
class Snapshot:
    """A namespace's state at ``ends`` (ledger offsets), as written by the engine."""

    state: LedgerState
    ends: dict[TopicPartition, int]
    taken_at: str = ""


def encode_snapshot(
    namespace: str,
    books: Mapping[str, Book],
    resting: Sequence[RestingOrder],
    sequence: int,
    ends: Mapping[TopicPartition, int],
) -> dict[str, Any]:
    """The payload of a ``ledger.snapshot`` event."""
    orders = []
    for order in resting:
        req = order.request
        event = OrderEvent(
            client_order_id=req.client_order_id,
            signal_id=req.signal_id,
            strategy_id=req.strategy_id,
            namespace=namespace,
            instrument_token=req.instrument_token,
            symbol=req.symbol,
            action=req.action,
            quantity=req.quantity,
            order_type=req.order_type,
            limit_price=req.limit_price,
            status="PLACED",  # type: ignore[arg-type]
            sequence=order.sequence,
            placed_at=order.placed_at,
        )
        orders.append(
            {"order": event.model_dump(mode="json"), "correlation_id": order.correlation_id}
        )
    return {
        "version": SNAPSHOT_VERSION,
        "namespace": namespace,
        "taken_at": datetime.now(UTC).isoformat(),
        "sequence": sequence,
        "ends": [[tp.topic, tp.partition, end] for tp, end in sorted(ends.items())],
        "books": {sid: book.to_dict() for sid, book in sorted(books.items())},
        "resting": orders,
    }


def decode_snapshot(envelope: Mapping[str, Any], namespace: str) -> Snapshot | None:
    """The snapshot an envelope carries, or None when it is not a usable one."""
    data = envelope.get("data")
    if envelope.get("type") != SNAPSHOT_TYPE or not isinstance(data, dict):
        return None
    if data.get("version") != SNAPSHOT_VERSION or data.get("namespace") != namespace:
        return None
    try:
        state = LedgerState(namespace, sequence=int(data["sequence"]), from_snapshot=True)
        state.books = {str(sid): Book.from_dict(b) for sid, b in dict(data["books"]).items()}
        for item in data["resting"]:
            event = OrderEvent.model_validate(item["order"])
            if event.namespace != namespace or event.placed_at is None:
                return None
            correlation = item.get("correlation_id")
            state.resting.append(
                RestingOrder(
                    request_of(event),
                    event.placed_at.astimezone(UTC),
                    event.sequence,
                    correlation if isinstance(correlation, str) else None,
                )
            )
        ends = {TopicPartition(str(t), int(p)): int(e) for t, p, e in data["ends"]}
    except (KeyError, TypeError, ValueError, ValidationError):
        return None
    return Snapshot(state, ends, str(data.get("taken_at", "")))


@dataclass
class LedgerRead:
    """Ledger states by namespace, the other topics read with them, and what was read."""

    states: dict[str, LedgerState]
    ends: dict[TopicPartition, int]
    records: int  # ledger records read (the other topics not counted)
    undecodable: int
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)


async def latest_snapshots(
    config: RedpandaSettings, namespaces: Sequence[str], timeout_s: float
) -> dict[str, Snapshot]:
    """The newest usable snapshot of each namespace that has one."""
    topics = {snapshot_topic(ns): ns for ns in namespaces}
    found: dict[str, Snapshot] = {}

    def on_batch(batch: Sequence[FetchedRecord]) -> None:
        for record in batch:
            envelope = decode_envelope(record)
            namespace = topics[record.topic]
            snapshot = None if envelope is None else decode_snapshot(envelope, namespace)
            if snapshot is not None:
                found[namespace] = snapshot

    await scan_topics(config, list(topics), on_batch, tail=1, timeout_s=timeout_s)
    return found


async def read_ledger(
    config: RedpandaSettings,
    namespaces: Sequence[str],
    *,
    starting_cash: float,
    remember: int = 20_000,
    extra_tails: Mapping[str, int] | None = None,
    snapshots: bool = True,
    timeout_s: float = 120.0,
) -> LedgerRead:
    """Fold the ledger of ``namespaces`` (from their last snapshots on) in one pass.

    ``extra_tails`` names other topics to read in the same pass (the last N
    records of each partition); their decoded envelopes come back in ``extra``.
    """
    topics = ledger_topics(namespaces)
    found = await latest_snapshots(config, namespaces, timeout_s) if snapshots else {}
    starts: dict[TopicPartition, int] = {}
    covered: dict[TopicPartition, int] = {}
    for snapshot in found.values():
        per_topic: dict[str, int] = {}
        for tp in snapshot.ends:
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + 1
        for tp, end in snapshot.ends.items():
            window = math.ceil(remember / per_topic[tp.topic])
            starts[tp] = max(0, end - window)
            covered[tp] = end
    tails = dict(extra_tails or {})
    folds = {
        ns: LedgerFold(ns, starting_cash, remember, found[ns].state if ns in found else None)
        for ns in namespaces
    }
    extra: dict[str, list[dict[str, Any]]] = {topic: [] for topic in tails}
    undecodable = 0
    read = 0

    def on_batch(batch: Sequence[FetchedRecord]) -> None:
        nonlocal undecodable, read
        for record in batch:
            envelope = decode_envelope(record)
            read += record.topic in topics
            if envelope is None:
                undecodable += 1
            elif record.topic in topics:
                end = covered.get(TopicPartition(record.topic, record.partition), 0)
                folds[topics[record.topic]].add(envelope, ids_only=record.offset < end)
            else:
                extra[record.topic].append(envelope)

    scan = await scan_topics(
        config, [*topics, *tails], on_batch, tail=tails, start_offsets=starts, timeout_s=timeout_s
    )
    stale = sorted({topics[tp.topic] for tp, end in covered.items() if end > scan.ends.get(tp, 0)})
    states = {ns: fold.result() for ns, fold in folds.items() if ns not in stale}
    if stale:
        logger.warning(
            "ledger snapshot of %s covers offsets beyond the ledger's end (topic recreated?); "
            "folding the whole ledger instead",
            ", ".join(stale),
        )
        again = await read_ledger(
            config,
            stale,
            starting_cash=starting_cash,
            remember=remember,
            snapshots=False,
            timeout_s=timeout_s,
        )
        states.update(again.states)
        for ns in stale:
            found.pop(ns, None)
    if undecodable:
        logger.warning("ledger: %d record(s) that are not JSON objects were skipped", undecodable)
    ends = {tp: end for tp, end in scan.ends.items() if tp.topic in topics}
    return LedgerRead(
        states,
        ends,
        read,
        undecodable,
        extra,
        {ns: snap.taken_at for ns, snap in found.items()},
    )
