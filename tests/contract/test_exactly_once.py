"""Exactly-once flows: outputs, dead letters and input offsets commit together.

Each scenario runs on the embedded broker and on real Kafka + Redis. The output
is read as a ``read_committed`` consumer reads it; reading it uncommitted as well
shows what was written and aborted on the way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.streaming.clients import create_transactional_producer
from core.streaming.embedded.partitioner import partition_for_key
from core.streaming.errors import PermanentError, ProducerFencedError, RetryableError
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.infrastructure.transactions import PartitionTransactions, transactional_id_for
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.topic_reader import read_topic
from core.streaming.types import TopicPartition
from tests.contract.conftest import Backend
from tests.contract.helpers import eventually, service

pytestmark = pytest.mark.timeout(120)


async def _committed(backend: Backend, group: str, topic: str, partitions: int) -> list[int | None]:
    harness = backend.harness
    if backend.name == "memory":
        broker = harness.broker
        return [broker.committed(group, TopicPartition(topic, p)) for p in range(partitions)]
    from core.streaming.clients import create_consumer

    consumer = create_consumer(backend.settings.redpanda, [topic], group)
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()


async def test_outputs_and_offsets_commit_together(backend: Backend) -> None:
    source = await backend.create_topic("in", partitions=3)
    out = await backend.create_topic("out", partitions=2)
    group = backend.topic("copier")
    orchestrator: ServiceOrchestrator

    async def copy(event: dict[str, Any]) -> None:
        await orchestrator.producer.enqueue(out, event["data"]["key"], {"src": event["id"]})

    orchestrator = service(
        backend.settings,
        copy,
        topics=[source],
        group=group,
        dedup=False,
        producer=True,
        processing_guarantee="exactly_once",
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        sent = [await harness.publish(source, {"key": f"k{i}"}, key=f"k{i}") for i in range(60)]
        await harness.wait_idle(timeout_s=60)
        flow = orchestrator.flows[0]
        assert flow.consumer.options.isolation_level == "read_committed"
        assert flow.health()["transactions"]["partitions"] == 3
    copies = [e["data"]["src"] for e in await harness.read(out)]
    assert sorted(copies) == sorted(sent)
    ends = [sum(1 for _ in range(0))] * 3
    committed = await _committed(backend, group, source, 3)
    records = await harness.read_records(source)
    for p in range(3):
        ends[p] = 1 + max((r.offset for r in records if r.partition == p), default=-1)
    assert committed == ends, "the input offsets committed with the outputs"


async def test_a_failed_attempt_that_sent_commits_its_output_once(backend: Backend) -> None:
    source = await backend.create_topic("in")
    out = await backend.create_topic("out")
    failures = {"left": 2}
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        await orchestrator.producer.send(out, None, {"src": event["id"], "part": 1})
        await orchestrator.producer.enqueue(out, None, {"src": event["id"], "part": 2})
        if event["data"].get("flaky") and failures["left"] > 0:
            failures["left"] -= 1
            raise RetryableError("downstream hiccup after the sends")

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        producer=True,
        processing_guarantee="exactly_once",
        retry_attempts=5,
        retry_backoff_initial_ms=1,
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        ids = [await harness.publish(source, {"flaky": i == 1}, key="k") for i in range(3)]
        await harness.wait_idle(timeout_s=60)
    committed = [(e["data"]["src"], e["data"]["part"]) for e in await harness.read(out)]
    written = await harness.read(out, committed=False)
    assert sorted(committed) == sorted((i, part) for i in ids for part in (1, 2))
    assert failures["left"] == 0
    assert len(written) > len(committed), "the failed attempts' records were written, then aborted"


async def test_dead_letters_are_part_of_the_transaction(backend: Backend) -> None:
    source = await backend.create_topic("in")
    out = await backend.create_topic("out")
    await backend.create_topic("in.dlq")
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        if event["data"].get("poison"):
            raise PermanentError("cannot be handled")
        await orchestrator.producer.enqueue(out, None, {"src": event["id"]})

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        producer=True,
        processing_guarantee="exactly_once",
        commit_policy=CommitPolicy(every=1_000_000, interval_ms=25_000),
    )
    harness = backend.harness
    dead_topic = f"{source}.dlq"
    async with harness.running(orchestrator):
        poison = await harness.publish(source, {"poison": True}, key="k")
        flow = orchestrator.flows[0]
        await eventually(lambda: flow.layer.error_handler.dead_lettered == 1, 30, "dead letter")
        uncommitted = await harness.read_records(dead_topic, committed=False)
        committed_before = await harness.read_records(dead_topic)
        await flow.checkpoint.commit()
        committed_after = await harness.read_records(dead_topic)
    assert len(uncommitted) == 1 and committed_before == []
    assert len(committed_after) == 1
    assert poison.encode() in (committed_after[0].value or b"")


async def test_exactly_once_refuses_what_it_cannot_keep(backend: Backend) -> None:
    async def handle(event: dict[str, Any]) -> None:
        return None

    with pytest.raises(ValueError, match="ordering='partition'"):
        service(
            backend.settings,
            handle,
            processing_guarantee="exactly_once",
            ordering="key",
            concurrency=4,
            dedup=False,
        )
    builder = StreamServiceBuilder("svc", backend.settings.redpanda, backend.settings)

    async def batch(events: list[dict[str, Any]]) -> None:
        return None

    builder.add_batch_handler(["in"], "g", batch, processing_guarantee="exactly_once")
    with pytest.raises(ValueError, match="batch handler"):
        builder.build()
    with pytest.raises(ValueError, match="processing_guarantee"):
        service(backend.settings, handle, processing_guarantee="exactly-once", dedup=False)


async def test_a_refused_output_fails_only_its_input_and_the_rest_commit_once(
    backend: Backend,
) -> None:
    source = await backend.create_topic("in")
    out = await backend.create_topic("out", configs={"max.message.bytes": "2000"})
    await backend.create_topic("in.dlq")
    attempts: dict[int, int] = {}
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        attempts[n] = attempts.get(n, 0) + 1
        padding = "x" * (5_000 if n == 2 else 10)
        await orchestrator.producer.enqueue(out, str(n), {"n": n, "pad": padding})

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        group=backend.topic("g"),
        dedup=False,
        producer=True,
        processing_guarantee="exactly_once",
        retry_attempts=3,
        retry_backoff_initial_ms=1,
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        for n in (1, 2, 3, 4):
            await harness.publish(source, {"n": n}, key="k")
        await harness.wait_idle(timeout_s=60)
    outputs = sorted(e["data"]["n"] for e in await harness.read(out))
    dead = await harness.read_dead_letters(source)
    assert outputs == [1, 3, 4]
    assert len(dead) == 1 and b'"n":2' in (dead[0].value or b"")
    assert attempts[2] == 3


async def test_a_handler_sees_how_much_other_partitions_have_not_committed(
    backend: Backend,
) -> None:
    """``uncommitted_elsewhere`` counts other partitions' open records, never its own.

    The trading engine writes a snapshot of state shared by all partitions only
    when it is zero, so that an aborted transaction cannot leave its effects in a
    committed snapshot.
    """
    source = await backend.create_topic("in", partitions=2)
    out = await backend.create_topic("out")
    keys = {partition_for_key(f"k{i}".encode(), 2): f"k{i}" for i in range(10)}
    release = asyncio.Event()
    seen: dict[str, int] = {}
    orchestrator: ServiceOrchestrator

    async def handle(event: dict[str, Any]) -> None:
        step = event["data"]["step"]
        await orchestrator.producer.enqueue(out, step, {"step": step})
        seen[step] = orchestrator.uncommitted_elsewhere()
        if step == "hold":
            await release.wait()

    orchestrator = service(
        backend.settings,
        handle,
        topics=[source],
        dedup=False,
        producer=True,
        processing_guarantee="exactly_once",
        group=backend.topic("g"),
    )
    harness = backend.harness
    async with harness.running(orchestrator):
        await harness.publish(source, {"step": "hold"}, key=keys[0])
        await eventually(lambda: "hold" in seen, 30, "the held handler")
        await harness.publish(source, {"step": "while-held"}, key=keys[1])
        await eventually(lambda: "while-held" in seen, 30, "the other partition's handler")
        release.set()
        await harness.wait_idle(timeout_s=60)
        await harness.publish(source, {"step": "after"}, key=keys[1])
        await harness.wait_idle(timeout_s=60)
    assert seen["hold"] == 0  # its own output is not counted
    assert seen["while-held"] == 1  # the held handler's output, not yet committed
    assert seen["after"] == 0
    assert sorted(e["data"]["step"] for e in await harness.read(out)) == [
        "after",
        "hold",
        "while-held",
    ]


async def test_fencing_finishes_what_a_dead_owner_left_open(backend: Backend) -> None:
    """``fence`` aborts a transaction an earlier owner of a partition left open.

    A service that reads its own outputs back before consuming (the trading
    engine's ledger) calls it first; without it a ``read_committed`` read waits
    at the open transaction, and a commit landing after the read is missed.
    """
    source = await backend.create_topic("in", partitions=2)
    out = await backend.create_topic("out")
    group = backend.topic("g")
    config = backend.settings.redpanda
    zombie = create_transactional_producer(
        config, transactional_id_for(group, TopicPartition(source, 1))
    )
    await zombie.start()
    try:
        await zombie.begin_transaction()
        await (await zombie.send(out, b"left open"))
        fenced = await PartitionTransactions(config, group).fence([source, backend.topic("none")])
        assert fenced == 2  # both partitions of the input; a missing topic has no owner
        with pytest.raises(ProducerFencedError):
            await zombie.commit_transaction()
    finally:
        await zombie.stop()
    assert await read_topic(config, out, timeout_s=20) == []
    aborted = await read_topic(config, out, timeout_s=20, isolation_level="read_uncommitted")
    assert [r.value for r in aborted] == [b"left open"]
