"""Dedup identity comes only from a valid envelope's id or a flow's key function.

A value that is not an envelope, or an identity that can repeat for a different
record, never makes a message be skipped as a duplicate (delivery contract 1, 2, 15).
"""

from __future__ import annotations

from typing import Any

import orjson

from core.streaming.embedded import get_broker
from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import envelope, service


async def test_a_foreign_json_object_with_an_id_field_is_never_skipped() -> None:
    seen: list[Any] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(event["qty"])

    async with (
        StreamTestHarness() as harness,
        harness.running(service(harness.settings, handle)),
    ):
        await harness.publish_raw("in", orjson.dumps({"id": "cust-42", "qty": 1}))
        await harness.publish_raw("in", orjson.dumps({"id": "cust-42", "qty": 2}))
        await harness.wait_idle()
    assert sorted(seen) == [1, 2]


async def test_a_flow_dedup_key_function_gives_identity_to_foreign_records() -> None:
    seen: list[Any] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(event["qty"])

    def key(value: dict[str, Any]) -> str | None:
        return f"{value['id']}:{value['qty']}"

    async with (
        StreamTestHarness() as harness,
        harness.running(service(harness.settings, handle, dedup_key=key)),
    ):
        for qty in (1, 1, 2):
            await harness.publish_raw(
                "in", orjson.dumps({"id": "cust-42", "qty": qty}), key=b"same"
            )
        await harness.wait_idle()
    assert seen == [1, 2]


async def test_envelopes_are_still_deduplicated_by_their_id() -> None:
    seen: list[str] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(event["id"])

    async with (
        StreamTestHarness() as harness,
        harness.running(service(harness.settings, handle)),
    ):
        for event_id in ("e1", "e1", "e2", "e1"):
            await harness.publish_raw("in", envelope(event_id), key=b"same")
        await harness.wait_idle()
    assert seen == ["e1", "e2"]


async def test_records_at_reused_offsets_of_a_recreated_topic_are_handled() -> None:
    seen: list[Any] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(event["n"])

    async with StreamTestHarness() as harness:
        broker = get_broker(harness.broker_url)
        broker.create_topic("in", partitions=1)
        async with harness.running(service(harness.settings, handle)):
            await harness.publish_raw("in", orjson.dumps({"n": 1}))
            await harness.wait_idle()
        broker.delete_topic("in")
        broker.create_topic("in", partitions=1)
        async with harness.running(service(harness.settings, handle)):
            await harness.publish_raw("in", orjson.dumps({"n": 2}))
            await harness.wait_idle()
    assert seen == [1, 2]


async def test_a_huge_event_id_does_not_become_a_huge_redis_key() -> None:
    huge = "x" * 200_000
    seen: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(len(event["id"]))

    async with StreamTestHarness() as harness:
        orchestrator = service(harness.settings, handle)
        async with harness.running(orchestrator):
            await harness.publish_raw("in", envelope(huge))
            await harness.publish_raw("in", envelope(huge))
            await harness.wait_idle()
            redis = orchestrator.connections.redis  # type: ignore[union-attr]
            keys = [key async for key in redis.scan_iter("dedup:*")]
    assert seen == [200_000]
    longest = max((len(k) for k in keys), default=0)
    assert keys and longest < 300, f"longest dedup key is {longest} bytes"
