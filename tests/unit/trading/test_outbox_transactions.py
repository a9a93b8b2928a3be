"""An event leaves in the transaction of the handler that queued it, whoever flushes it.

The engine's outbox is shared by all partitions' handlers. Under exactly-once,
an event queued by partition B's handler but sent by partition A's flush would
otherwise go into A's transaction: B's input could commit without it, and an
abort of A would lose it for good.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from core.schemas.events import EventType, MarketTick
from core.streaming.infrastructure.partition_transaction import PartitionTransaction
from core.streaming.infrastructure.transactions import (
    current_transaction,
    route_to,
    stop_routing,
)
from core.streaming.types import RecordMetadata
from services.trading_engine.outbox import Outbox


class _Pending:
    def __init__(self, ack: RecordMetadata) -> None:
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        future.set_result(ack)
        self.ack = future


class _RecordingPublisher:
    """Records the transaction each event was sent into."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def send(self, *args: Any, **kwargs: Any) -> str:
        raise AssertionError("enqueue is used when acks are reported")

    async def enqueue(self, topic: str, key: str, *args: Any, **kwargs: Any) -> _Pending:
        self.sent.append((key, current_transaction()))
        return _Pending(cast(RecordMetadata, SimpleNamespace(topic=topic, partition=0, offset=0)))


def _tick() -> MarketTick:
    return MarketTick.model_validate(
        {"instrument_token": 1, "symbol": "X", "last_price": 1.0, "volume": 1}
    )


async def test_each_event_goes_into_the_transaction_of_the_handler_that_queued_it() -> None:
    publisher = _RecordingPublisher()
    outbox = Outbox(publisher, on_ack=lambda metadata: None)
    tx_a = cast(PartitionTransaction, object())
    tx_b = cast(PartitionTransaction, object())
    b_queued = asyncio.Event()
    release_b = asyncio.Event()

    async def handler(name: str, tx: PartitionTransaction) -> None:
        token = route_to(tx)
        try:
            outbox.add("t", name, _tick(), EventType.MARKET_TICK, None, None)
            if name == "b":
                b_queued.set()
                await release_b.wait()  # B flushes only after A did
            await outbox.flush()
        finally:
            stop_routing(token)

    b = asyncio.create_task(handler("b", tx_b))
    await b_queued.wait()
    await handler("a", tx_a)  # A's flush sends B's queued event first
    release_b.set()
    await b
    assert publisher.sent == [("b", tx_b), ("a", tx_a)]
    assert len(outbox) == 0 and outbox.sent == 2
