"""One hostile record never stops a flow or blocks a partition (delivery contract 15).

A record whose dead letter cannot fit is dead-lettered as a reference (source
coordinates, size, error, a truncated value); null header values and huge keys
pass through; the original stays readable at its source offset.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.conftest import Backend
from tests.contract.helpers import service


async def test_a_record_whose_dead_letter_cannot_fit_is_dead_lettered_as_a_reference(
    backend: Backend,
) -> None:
    source = await backend.create_topic("in")
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    harness = backend.harness
    big = b"\xff" + b"x" * 1_048_000  # undecodable, just under the broker's record limit
    orchestrator = service(backend.settings, handle, topics=[source], group=backend.topic("g"))
    async with harness.running(orchestrator):
        await harness.publish(source, {"n": 1}, key="k")
        await harness.publish_raw(source, big, key=b"k", headers=[("origin", b"x" * 300)])
        await harness.publish(source, {"n": 2}, key="k")
        await harness.wait_idle(timeout_s=60)
        health = await orchestrator.health()
    dead = await harness.read_dead_letters(source)
    originals = await harness.read_records(source)
    assert handled == [1, 2]
    assert len(dead) == 1
    letter = dead[0]
    assert letter.header("dlq.reference") == "true"
    assert letter.header("dlq.original.offset") == "1"
    assert int(letter.header("dlq.original.size")) > len(big)
    assert len(letter.value or b"") < 20_000
    assert originals[1].value == big, "the original stays readable at its source offset"
    assert health["ready"]


async def test_null_header_values_and_huge_keys_pass_through(backend: Backend) -> None:
    source = await backend.create_topic("in")
    seen: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        seen.append(event["data"]["n"])

    harness = backend.harness
    huge_key = b"k" * 100_000
    orchestrator = service(backend.settings, handle, topics=[source], group=backend.topic("g"))
    async with harness.running(orchestrator):
        await harness.publish_raw(
            source,
            b"not json",
            key=huge_key,
            headers=[("n", None), ("ok", b"1")],  # type: ignore[list-item]
        )
        await harness.publish(source, {"n": 1}, key="k")
        await harness.wait_idle(timeout_s=30)
    dead = await harness.read_dead_letters(source)
    assert seen == [1]
    assert len(dead) == 1 and dead[0].key == huge_key
    assert (dead[0].error_type or "").endswith(".DecodeError")


@pytest.mark.kafka
async def test_a_record_the_client_cannot_read_is_dead_lettered_as_a_reference(
    backend: Backend,
) -> None:
    """A header key that is not UTF-8 (written by another client) on real Kafka."""
    if backend.name != "kafka":
        pytest.skip("only a real broker stores what aiokafka cannot read")
    from tests.raw_batches import produce_raw, raw_batch

    BAD_HEADER_KEY = b"\xff\xfe bad header key"
    source = await backend.create_topic("in")
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    harness = backend.harness
    orchestrator = service(backend.settings, handle, topics=[source], group=backend.topic("g"))
    async with harness.running(orchestrator):
        await harness.publish(source, {"n": 1}, key="k")
        bootstrap = backend.settings.redpanda.bootstrap_servers
        poison = raw_batch([(b"k", b"{}", [(BAD_HEADER_KEY, b"x")])])
        await produce_raw(bootstrap, source, 0, poison)
        await harness.publish(source, {"n": 2}, key="k")
        await harness.wait_idle(timeout_s=60)
        health = await orchestrator.health()
    dead = await harness.read_dead_letters(source)
    assert handled == [1, 2]
    assert len(dead) == 1 and dead[0].header("dlq.reference") == "true"
    assert dead[0].header("dlq.original.offset") == "1"
    assert "UTF-8" in (dead[0].header("dlq.exception.message") or "")
    assert health["ready"]


async def test_a_too_large_record_is_refused_with_its_size_headers_included(
    backend: Backend,
) -> None:
    from core.streaming.errors import MessageTooLargeError
    from core.streaming.infrastructure.message_producer import MessageProducer

    source = await backend.create_topic("in")
    producer = MessageProducer(backend.settings.redpanda, "sizer")
    try:
        with pytest.raises(MessageTooLargeError) as info:
            await producer.send_raw(source, b"k", b"v" * 600_000, [("h", b"x" * 600_000)])
    finally:
        await producer.stop()
    sizes = [int(word) for word in str(info.value).replace(",", "").split() if word.isdigit()]
    assert max(sizes) >= 1_200_000, str(info.value)
