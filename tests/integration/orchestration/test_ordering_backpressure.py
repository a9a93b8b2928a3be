"""Key-ordered concurrency and backpressure on the real broker."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections import defaultdict
from typing import Any

import pytest

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from tests.conftest import KafkaAdmin
from tests.integration.orchestration.helpers import (
    committed_offsets,
    end_offsets,
    kafka_settings,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka


async def test_key_ordering_with_concurrency_keeps_per_key_order(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=3)
    n, keys = 10_000, 200
    await produce(
        kafka_bootstrap, topic, [(f"k{i % keys}", {"k": i % keys, "seq": i}) for i in range(n)]
    )
    seen: dict[int, list[int]] = defaultdict(list)
    active = 0
    peak = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        seen[event["data"]["k"]].append(event["data"]["seq"])
        active -= 1

    group = f"{unique_name}-g"
    service = (
        StreamServiceBuilder("ordering", settings=kafka_settings(kafka_bootstrap))
        .add_consumer_handler([topic], group, handle, ordering="key", concurrency=16)
        .build()
    )
    await service.start()
    try:
        await wait_until(lambda: sum(map(len, seen.values())) >= n, 120, "all messages handled")
    finally:
        await service.stop()
    for k, seqs in seen.items():
        assert seqs == sorted(seqs), f"key {k} out of order"
        assert len(seqs) == n // keys
    assert peak > 1, "different keys never ran in parallel"
    assert await committed_offsets(kafka_bootstrap, group, topic, 3) == await end_offsets(
        kafka_bootstrap, topic, 3
    )


async def test_backpressure_bounds_in_flight_and_memory(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=3)
    n = 3_000
    blob = "x" * 10_000  # 30 MB of payload in all
    await produce(kafka_bootstrap, topic, [(f"k{i}", {"i": i, "blob": blob}) for i in range(n)])
    handled = 0
    bound = 40

    async def slow(event: dict[str, Any]) -> None:
        nonlocal handled
        await asyncio.sleep(0.0005)
        handled += 1

    service = (
        StreamServiceBuilder("backpressure", settings=kafka_settings(kafka_bootstrap))
        .add_consumer_handler(
            [topic],
            f"{unique_name}-g",
            slow,
            max_in_flight=bound,
            ordering="unordered",
            concurrency=8,
        )
        .build()
    )
    flow = service.flows[0]
    max_in_flight = 0
    tracemalloc.start()
    try:
        await service.start()
        baseline = tracemalloc.get_traced_memory()[0]
        deadline = time.monotonic() + 120
        while handled < n:
            assert time.monotonic() < deadline, f"{handled} of {n} handled"
            max_in_flight = max(max_in_flight, flow.dispatcher.in_flight)
            await asyncio.sleep(0.001)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await service.stop()
    assert max_in_flight <= bound
    assert flow.backpressure_pauses > 0
    # Decoded payloads of every message would be ~30 MB; bounded in-flight work plus
    # the client's fetch buffers stays far below that.
    assert peak - baseline < 15 * 1024 * 1024, f"memory grew by {(peak - baseline) / 1e6:.1f} MB"
