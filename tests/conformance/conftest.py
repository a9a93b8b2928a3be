"""Backends for the conformance suite: the embedded broker and a real Kafka broker.

Every scenario runs once per backend through the same makers
(``create_consumer``/``create_producer``/``create_admin``), so the embedded broker
cannot drift from Kafka unnoticed. The ``kafka`` backend needs
``KAFKA_BOOTSTRAP_SERVERS``; without it that parameter is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from core.config.settings import RedpandaSettings
from core.streaming.clients import (
    AdminClient,
    ConsumerClient,
    ConsumerOptions,
    ProducerClient,
    RebalanceListener,
    TransactionalProducerClient,
    create_admin,
    create_consumer,
    create_producer,
    create_transactional_producer,
)
from core.streaming.embedded import InMemoryBroker, InMemoryConsumer, drop_broker, get_broker
from core.streaming.types import Record, TopicPartition, TopicSpec


class RecordingListener:
    """A rebalance listener that keeps the callbacks it received, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", frozenset(revoked)))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(assigned)))


REPO_ROOT = Path(__file__).resolve().parents[2]
MEMBER_PROCESS = Path(__file__).with_name("member_process.py")


@dataclass
class DoomedMember:
    """A group member about to die: what it read, its generation and id, and its body."""

    offsets: list[int]
    generation: int
    member_id: str | None
    body: InMemoryConsumer | asyncio.subprocess.Process

    async def kill(self) -> None:
        """Kill it without a goodbye: SIGKILL for a process, stopped heartbeats in memory."""
        if isinstance(self.body, InMemoryConsumer):
            await self.body.crash()
        else:
            self.body.send_signal(signal.SIGKILL)
            assert await self.body.wait() == -signal.SIGKILL


class Backend:
    """One broker backend plus helpers that make clients and clean them up."""

    def __init__(self, name: str, bootstrap_servers: str) -> None:
        self.name = name
        self.settings = RedpandaSettings(bootstrap_servers=bootstrap_servers)
        self.prefix = f"conf-{uuid4().hex[:10]}"
        self.timeout_s = 45.0 if name == "kafka" else 5.0
        self._consumers: list[ConsumerClient] = []
        self._producers: list[ProducerClient] = []
        self._topics: list[str] = []
        self._admin: AdminClient | None = None
        self._processes: list[asyncio.subprocess.Process] = []
        self._names = 0

    @property
    def is_kafka(self) -> bool:
        return self.name == "kafka"

    @property
    def broker(self) -> InMemoryBroker:
        """The embedded broker (memory backend only)."""
        assert not self.is_kafka
        return get_broker(self.settings.bootstrap_servers)

    def name_for(self, kind: str) -> str:
        self._names += 1
        return f"{self.prefix}-{kind}{self._names}"

    async def admin(self) -> AdminClient:
        if self._admin is None:
            admin = create_admin(self.settings)
            await admin.start()
            self._admin = admin
        return self._admin

    async def topic(self, partitions: int = 3, configs: dict[str, str] | None = None) -> str:
        """A new topic with ``partitions`` partitions, created through the admin client."""
        name = self.name_for("topic")
        spec = TopicSpec(name, partitions=partitions, configs=configs or {})
        created = await (await self.admin()).create_topics([spec])
        assert created == [name]
        self._topics.append(name)
        return name

    @property
    def loss_options(self) -> ConsumerOptions:
        """Group timeouts short enough for a test to wait out a lost member's session."""
        if self.is_kafka:
            return ConsumerOptions(
                session_timeout_ms=3_000, heartbeat_interval_ms=500, rebalance_timeout_ms=6_000
            )
        return ConsumerOptions(
            session_timeout_ms=300, heartbeat_interval_ms=100, rebalance_timeout_ms=600
        )

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        listener: RebalanceListener | None = None,
        auto_offset_reset: str = "earliest",
        options: ConsumerOptions | None = None,
    ) -> ConsumerClient:
        options = replace(options or ConsumerOptions(), auto_offset_reset=auto_offset_reset)
        consumer = create_consumer(self.settings, topics, group, options, listener=listener)
        self._consumers.append(consumer)
        return consumer

    async def started_consumer(
        self, topics: Sequence[str], group: str, *, listener: RebalanceListener | None = None
    ) -> ConsumerClient:
        consumer = self.consumer(topics, group, listener=listener)
        await consumer.start()
        return consumer

    def track_topic(self, name: str) -> None:
        """Delete ``name`` at the end too (a topic a scenario made some other way)."""
        self._topics.append(name)

    async def started_producer(
        self, *, request_timeout_ms: int | None = None, **kwargs: Any
    ) -> ProducerClient:
        settings = self.settings
        if request_timeout_ms is not None:
            settings = settings.model_copy(update={"request_timeout_ms": request_timeout_ms})
        producer = create_producer(settings, **kwargs)
        self._producers.append(producer)
        await producer.start()
        return producer

    async def transactional_producer(
        self, transactional_id: str, *, transaction_timeout_ms: int = 60_000
    ) -> TransactionalProducerClient:
        """A started transactional producer (starting it fences older ones of the id)."""
        producer = create_transactional_producer(
            self.settings, transactional_id, transaction_timeout_ms=transaction_timeout_ms
        )
        self._producers.append(producer)
        await producer.start()
        return producer

    def listener(self) -> RecordingListener:
        return RecordingListener()

    async def doomed_member(
        self, topics: Sequence[str], group: str, *, read: int, commit: dict[TopicPartition, int]
    ) -> DoomedMember:
        """A member (with ``loss_options``) that fetched ``read`` records and committed.

        On Kafka it lives in a child process, to be killed with SIGKILL; on the
        embedded broker it is a consumer whose heartbeats are stopped.
        """
        if not self.is_kafka:
            consumer = self.consumer(topics, group, options=self.loss_options)
            await consumer.start()
            records = await self.drain(consumer, read)
            await consumer.commit(commit)
            assert isinstance(consumer, InMemoryConsumer)
            return DoomedMember(
                [r.offset for r in records], consumer.generation, consumer.member_id, consumer
            )
        options = self.loss_options
        spec = {
            "bootstrap": self.settings.bootstrap_servers,
            "topics": list(topics),
            "group": group,
            "options": {
                "session_timeout_ms": options.session_timeout_ms,
                "heartbeat_interval_ms": options.heartbeat_interval_ms,
                "rebalance_timeout_ms": options.rebalance_timeout_ms,
            },
            "read": read,
            "commit": [[tp.topic, tp.partition, offset] for tp, offset in commit.items()],
            "linger_s": 90,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(MEMBER_PROCESS),
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        self._processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), self.timeout_s)
        if not line:
            pytest.fail(f"member process exited with {await process.wait()} before reporting")
        report = json.loads(line)
        return DoomedMember(report["offsets"], report["generation"], report["member"], process)

    async def drain(
        self, consumer: ConsumerClient, count: int, *, timeout_s: float | None = None
    ) -> list[Record]:
        """Poll until ``count`` records arrived; fail with what did arrive otherwise."""
        records: list[Record] = []
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while len(records) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"[{self.name}] got {len(records)} of {count} records: {records}")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records

    async def poll_until(
        self,
        consumers: Sequence[ConsumerClient],
        condition: Callable[[dict[int, list[Record]]], bool],
        *,
        what: str,
        timeout_s: float | None = None,
    ) -> dict[int, list[Record]]:
        """Poll every consumer until ``condition()``; returns the records each got."""
        got: dict[int, list[Record]] = {i: [] for i in range(len(consumers))}
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not condition(got):
            if time.monotonic() > deadline:
                pytest.fail(f"[{self.name}] timed out waiting for {what}")
            for i, consumer in enumerate(consumers):
                for batch in (await consumer.getmany(timeout_ms=100)).values():
                    got[i].extend(batch)
        return got

    async def close(self) -> None:
        for process in self._processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.stop()
        for producer in self._producers:
            with contextlib.suppress(Exception):
                await producer.stop()
        if self._admin is not None:
            if self.is_kafka and self._topics:
                with contextlib.suppress(Exception):
                    await self._admin.delete_topics(self._topics)
            with contextlib.suppress(Exception):
                await self._admin.close()
        if not self.is_kafka:
            drop_broker(self.settings.bootstrap_servers)


@pytest.fixture(params=["memory", "kafka"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each scenario once on a fresh embedded broker and once on real Kafka."""
    if request.param == "kafka":
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not servers:
            pytest.skip(
                "KAFKA_BOOTSTRAP_SERVERS is not set: the kafka backend of the conformance "
                "suite needs a real broker (bash scripts/test.sh starts one)"
            )
        request.applymarker(pytest.mark.kafka)
    else:
        servers = f"memory://conf-{uuid4().hex}"
    backend = Backend(request.param, servers)
    try:
        yield backend
    finally:
        await backend.close()
