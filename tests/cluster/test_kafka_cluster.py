"""The framework on a 3-broker KRaft cluster: replicated topics, acks=all, a broker killed.

Topics the services create get replication factor 3 (``TOPIC_REPLICATION_FACTOR``)
and the cluster's ``min.insync.replicas=2``; the framework's producer is
idempotent with acks=all, so a write is acknowledged only once enough replicas
have it; and a service keeps every message through the kill -9 of the broker
leading its input.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any
from uuid import uuid4

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from core.config.settings import RedpandaSettings, Settings
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from tests.cluster.conftest import KafkaClusterInfra

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def _settings(cluster: KafkaClusterInfra) -> Settings:
    return Settings().model_copy(
        update={
            "redpanda": RedpandaSettings(
                bootstrap_servers=cluster.bootstrap,
                topic_replication_factor=3,
                topic_partitions=3,
                connect_timeout_s=30,
            )
        }
    )


async def _admin(cluster: KafkaClusterInfra) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    return admin


async def _leader(admin: AIOKafkaAdminClient, topic: str, partition: int = 0) -> int:
    """The leader of ``topic``'s partition, once the topic is visible with one."""
    deadline = time.monotonic() + 30
    while True:
        described = (await admin.describe_topics([topic]))[0]
        parts = {p["partition"]: p for p in described.get("partitions") or []}
        if partition in parts and parts[partition]["leader"] >= 0:
            return int(parts[partition]["leader"])
        assert time.monotonic() < deadline, f"{topic} has no leader"
        await asyncio.sleep(0.1)


async def _read(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, "reading did not reach the end"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def test_service_topics_are_replicated_three_ways_with_min_isr_two(
    kafka_cluster: KafkaClusterInfra,
) -> None:
    name = f"rf-{uuid4().hex[:8]}"

    async def handle(event: dict[str, Any]) -> None:
        return None

    settings = _settings(kafka_cluster)
    service = (
        StreamServiceBuilder(name, settings.redpanda, settings)
        .add_producer(topics=[f"{name}.out"])
        .add_consumer_handler([f"{name}.in"], f"{name}.g", handle)
        .build()
    )
    await service.start()
    await service.stop()
    admin = await _admin(kafka_cluster)
    try:
        topics = [f"{name}.in", f"{name}.out", f"{name}.in.dlq"]
        for described in await admin.describe_topics(topics):
            assert len(described["partitions"]) == 3
            assert all(len(p["replicas"]) == 3 for p in described["partitions"]), described
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
        for response in configs:
            for resource in response.resources:
                values = {entry[0]: entry[1] for entry in resource[4]}
                assert values["min.insync.replicas"] == "2"
    finally:
        await admin.close()


async def test_acks_all_waits_for_the_in_sync_replicas(kafka_cluster: KafkaClusterInfra) -> None:
    """min.insync.replicas=3 with one broker down: no acknowledgement until it returns."""
    topic = f"isr-{uuid4().hex[:8]}"
    admin = await _admin(kafka_cluster)
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "3"})]
        )
        leader = await _leader(admin, topic)
    finally:
        await admin.close()
    follower = next(b for b in (1, 2, 3) if b != leader)
    producer = MessageProducer(_settings(kafka_cluster).redpanda, "isr-test")
    try:
        await producer.send(topic, "k", {"n": 0}, "n")  # all three up: acknowledged
        await kafka_cluster.arun("kill", str(follower))
        pending = [await producer.enqueue(topic, "k", {"n": n}, "n") for n in range(1, 6)]
        done, _ = await asyncio.wait([p.ack for p in pending], timeout=5)
        assert not done, "acknowledged with a replica missing: acks is not all"
        await kafka_cluster.arun("resume", str(follower))
        await asyncio.wait_for(asyncio.gather(*(p.ack for p in pending)), 90)
    finally:
        await producer.stop()
    records = await _read(kafka_cluster.bootstrap, topic, 1)
    counts = Counter(orjson.loads(r.value)["data"]["n"] for r in records)
    assert counts == Counter(range(6)), counts  # retried, never duplicated (idempotent)


async def test_service_loses_nothing_when_the_leader_broker_is_killed(
    kafka_cluster: KafkaClusterInfra,
) -> None:
    name = f"bk-{uuid4().hex[:8]}"
    settings = _settings(kafka_cluster)
    handled: Counter[int] = Counter()
    service: Any = None

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        handled[n] += 1
        await service.producer.send(f"{name}.out", str(n), {"n": n}, "echo")

    service = (
        StreamServiceBuilder(name, settings.redpanda, settings)
        .add_producer(topics=[f"{name}.out"])
        .add_consumer_handler([f"{name}.in"], f"{name}.g", handle)
        .build()
    )
    await service.start()
    feeder = MessageProducer(settings.redpanda, f"{name}-feeder")
    try:
        await feeder.send_many(f"{name}.in", [(str(n), {"n": n}) for n in range(300)], "n")
        admin = await _admin(kafka_cluster)
        try:
            leader = await _leader(admin, f"{name}.in")
        finally:
            await admin.close()
        await kafka_cluster.arun("kill", str(leader))
        await feeder.send_many(f"{name}.in", [(str(n), {"n": n}) for n in range(300, 600)], "n")
        await kafka_cluster.arun("resume", str(leader))
        deadline = time.monotonic() + 90
        while len(handled) < 600:
            assert time.monotonic() < deadline, f"only {len(handled)} of 600 handled"
            await asyncio.sleep(0.2)
    finally:
        await feeder.stop()
        await service.stop()
    outputs = await _read(kafka_cluster.bootstrap, f"{name}.out", 3)
    assert {orjson.loads(r.value)["data"]["n"] for r in outputs} == set(range(600))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_cluster.bootstrap, group_id=f"{name}.g", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(f"{name}.in", p) for p in range(3)]
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    assert committed == ends
