"""Running services on either backend: what a flow promises, checked without servers too.

The embedded half runs in a plain ``pytest``, so key-ordered concurrency and
envelope wrapping are checked even where no Kafka broker is started.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from core.config.settings import Settings
from core.streaming.dead_letters import read_dead_letters, replay_dead_letters
from core.streaming.errors import PermanentError
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

if TYPE_CHECKING:
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)


def settings_of(backend: Backend) -> Settings:
    return Settings().model_copy(update={"redpanda": backend.settings})


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def feed(
    backend: Backend, topic: str, items: list[tuple[str | None, dict[str, Any]]]
) -> list[str]:
    producer = MessageProducer(backend.settings, "feeder")
    try:
        return await producer.send_many(topic, items, "test.event")
    finally:
        await producer.stop()


async def test_key_ordered_concurrency_keeps_each_keys_order(backend: Backend) -> None:
    topic = await backend.topic(partitions=3)
    n, keys = 2_000, 100
    await feed(backend, topic, [(f"k{i % keys}", {"k": i % keys, "seq": i}) for i in range(n)])
    seen: dict[int, list[int]] = defaultdict(list)
    active = peak = 0
    rng = random.Random(7)

    async def handle(event: dict[str, Any]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        # Uneven handling times: any two messages of one key run at the same time
        # on different lanes would finish out of order.
        await asyncio.sleep(rng.random() * 0.002)
        seen[event["data"]["k"]].append(event["data"]["seq"])
        active -= 1

    service = (
        StreamServiceBuilder("ordering", settings=settings_of(backend))
        .add_consumer_handler(
            [topic], backend.name_for("group"), handle, ordering="key", concurrency=16
        )
        .build()
    )
    await service.start()
    try:
        await wait_until(lambda: sum(map(len, seen.values())) >= n, backend.timeout_s * 2, "all")
    finally:
        await service.stop()
    for k, seqs in seen.items():
        assert seqs == sorted(seqs), f"key {k} out of order"
        assert len(seqs) == n // keys
    assert peak > 1, "different keys never ran in parallel"


async def test_outputs_are_enveloped_and_carry_the_chain_of_their_cause(backend: Backend) -> None:
    source, sink = await backend.topic(partitions=1), await backend.topic(partitions=1)
    producer = MessageProducer(backend.settings, "upstream")
    try:
        first = await producer.send(
            source, "k1", {"id": "business-id", "qty": 3}, "thing.created", correlation_id="c-9"
        )
    finally:
        await producer.stop()
    received: list[dict[str, Any]] = []
    service: ServiceOrchestrator | None = None

    async def handle(event: dict[str, Any]) -> None:
        received.append(event)
        assert service is not None and service.producer is not None
        await service.producer.send(sink, "k2", {"id": "out-1", "qty": event["data"]["qty"] + 1})

    service = (
        StreamServiceBuilder("relay", settings=settings_of(backend))
        .add_producer([sink])
        .add_consumer_handler([source], backend.name_for("group"), handle)
        .build()
    )
    await service.start()
    try:
        consumer = await backend.started_consumer([sink], backend.name_for("reader"))
        [record] = await backend.drain(consumer, 1)
    finally:
        await service.stop()

    # What the handler got: the envelope, with the payload's own "id" kept as data.
    [event] = received
    assert event["id"] == first and event["data"] == {"id": "business-id", "qty": 3}
    assert event["type"] == "thing.created" and event["correlation_id"] == "c-9"
    # What it sent: wrapped too, and stamped with the chain it belongs to.
    assert record.key == b"k2"
    out = orjson.loads(record.value or b"")
    assert out["data"] == {"id": "out-1", "qty": 4}
    assert out["id"] != "out-1" and uuid.UUID(out["id"]).version == 7
    assert out["source"] == "relay"
    assert out["correlation_id"] == "c-9"
    assert out["causation_id"] == first
    headers = dict(record.headers)
    assert headers["event-id"] == out["id"].encode()
    assert headers["correlation-id"] == b"c-9"


async def test_null_header_values_and_a_100_kb_key_survive_a_dead_letter_and_its_replay(
    backend: Backend,
) -> None:
    source = await backend.topic(partitions=1)
    big_key = bytes(range(256)) * 400
    headers = [("n", None), ("bin", b"\xff\x00")]
    envelope = {"id": "e-1", "type": "t", "source": "x", "data": {"n": 1}}
    raw = await backend.started_producer()
    await (await raw.send(source, orjson.dumps(envelope), key=big_key, headers=headers))
    failed = asyncio.Event()

    async def handle(event: dict[str, Any]) -> None:
        failed.set()
        raise PermanentError("not today")

    group = backend.name_for("group")
    service = (
        StreamServiceBuilder("picky", settings=settings_of(backend))
        .add_consumer_handler([source], group, handle)
        .build()
    )
    await service.start()
    try:
        await asyncio.wait_for(failed.wait(), backend.timeout_s)
        await wait_until(
            lambda: service.flows[0].layer.outcomes["dead_lettered"] == 1, 30, "dead letter"
        )
    finally:
        await service.stop()

    [letter] = await read_dead_letters(backend.settings, f"{source}.dlq")
    assert letter.key == big_key and orjson.loads(letter.value or b"") == envelope
    assert list(letter.headers[:2]) == [("n", None), ("bin", b"\xff\x00")]
    assert letter.header("n") is None and letter.decoded_headers()["n"] == ""
    assert letter.error_type.endswith("PermanentError")

    [ack] = await replay_dead_letters(backend.settings, [letter])
    consumer = await backend.started_consumer([source], backend.name_for("reader"))
    replayed = [r for r in await backend.drain(consumer, 2) if r.offset == ack.offset]
    assert [(r.key, dict(r.headers)["n"]) for r in replayed] == [(big_key, None)]
