"""Under exactly-once a resting order is filled or expired only once its placement committed."""

from __future__ import annotations

import orjson

from core.schemas.events import OrderStatus, SignalAction
from core.streaming.infrastructure.consumed_message import (
    ConsumedMessage,
    reset_current_message,
    set_current_message,
)
from core.streaming.types import TopicPartition
from services.trading_engine.placements import PendingPlacements
from tests.unit.trading.test_paper_trader import NOW, TOKEN, limit_order, trader

SIGNALS = TopicPartition("ns.signals.validated", 1)


def _signal(offset: int) -> ConsumedMessage:
    value = {"id": f"s{offset}", "type": "signal.validated", "source": "v", "data": {}}
    return ConsumedMessage.of(
        topic=SIGNALS.topic,
        partition=SIGNALS.partition,
        offset=offset,
        key=None,
        value=value,
        raw_value=orjson.dumps(value),
    )


def _placed_while_handling(placements: PendingPlacements, oid: str, offset: int) -> None:
    token = set_current_message(_signal(offset))
    try:
        placements.note(oid)
    finally:
        reset_current_message(token)


async def test_a_tick_fills_a_resting_order_only_after_its_signal_committed() -> None:
    committed: dict[TopicPartition, int] = {}
    placements = PendingPlacements(committed.get)
    t = trader()
    request = limit_order(SignalAction.BUY, 100.0)
    placed = await t.place_order(request, 101.0, NOW)
    assert placed.status is OrderStatus.PLACED
    _placed_while_handling(placements, request.client_order_id, offset=7)

    assert t.on_tick(TOKEN, 99.0, placements.is_committed) == []  # nothing committed yet
    committed[SIGNALS] = 7  # the commit stopped just before the signal
    assert t.on_tick(TOKEN, 99.0, placements.is_committed) == []
    assert t.expire(None, placements.is_committed) == []
    committed[SIGNALS] = 8  # the signal's offset is committed: the order is final
    [fill] = t.on_tick(TOKEN, 99.0, placements.is_committed)
    assert fill.status is OrderStatus.FILLED and len(placements) == 0


async def test_at_least_once_or_outside_a_handler_nothing_is_held_back() -> None:
    at_least_once = PendingPlacements(None)
    _placed_while_handling(at_least_once, "o1", offset=3)
    assert at_least_once.is_committed("o1") and len(at_least_once) == 0

    exactly_once = PendingPlacements(lambda tp: None)
    exactly_once.note("o2")  # no message being handled: a restored order
    assert exactly_once.is_committed("o2")
