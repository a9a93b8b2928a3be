"""Test a built service with the real reliability path in the loop.

::

    async with StreamTestHarness() as harness:
        service = build_my_service(harness.settings)
        async with harness.running(service):
            await harness.publish("orders", {"qty": 1}, key="o-1", event_type="order.created")
            await harness.wait_idle()
            assert harness.produced("fills")[0]["data"]["qty"] == 1

By default the harness runs on a private embedded broker and dedup store.
With ``embedded=False`` it uses the broker and Redis of the settings it is
given (a real Kafka in integration tests); ``wait_idle`` and the async readers
(``read``, ``read_dead_letters``) work on both. ``wait_idle`` waits on the
service's own progress (every flow has finished every record up to the end of
its partitions), never on fixed sleeps, and fails saying which flow is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, Protocol
from uuid import uuid4

import orjson
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.dead_letters import DeadLetterRecord
from core.streaming.embedded import InMemoryBroker, drop_broker, get_broker
from core.streaming.infrastructure.message_producer import MessageProducer, Payload
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.topic_reader import read_topic
from core.streaming.types import FetchedRecord


class HarnessTimeoutError(AssertionError):
    """The service did not reach the awaited state in time."""


class Runnable(Protocol):
    """A service object with its own start/stop around an orchestrator."""

    @property
    def orchestrator(self) -> ServiceOrchestrator: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StreamTestHarness:
    """A broker and dedup store for a test, and helpers to drive services on them."""

    def __init__(
        self, settings: Settings | None = None, *, namespace: str = "test", embedded: bool = True
    ) -> None:
        base = settings or Settings()
        self.embedded = embedded
        if embedded:
            name = f"memory://harness-{uuid4().hex[:12]}"
            self.settings = base.model_copy(
                update={
                    "broker_namespace": base.broker_namespace if settings else namespace,
                    "redpanda": base.redpanda.model_copy(update={"bootstrap_servers": name}),
                    "redis": RedisSettings(url=SecretStr(name)),
                }
            )
        else:
            self.settings = base
        self.broker_url = self.settings.redpanda.bootstrap_servers
        self._producer = MessageProducer(self.config, "test-harness")
        self._services: list[ServiceOrchestrator] = []

    @property
    def config(self) -> RedpandaSettings:
        """Broker settings the harness and its services use."""
        return self.settings.redpanda

    @property
    def broker(self) -> InMemoryBroker:
        """The embedded broker, for inspection (embedded harness only)."""
        if not self.embedded:
            raise RuntimeError("this harness runs on a real broker; use the async readers")
        return get_broker(self.broker_url)

    async def __aenter__(self) -> StreamTestHarness:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for service in reversed(self._services):
            await service.stop()
        await self._producer.stop()
        if self.embedded:
            drop_broker(self.broker_url)

    @asynccontextmanager
    async def running(
        self, service: ServiceOrchestrator | Runnable, *, ready_timeout_s: float = 30.0
    ) -> AsyncIterator[ServiceOrchestrator]:
        """Start ``service``, wait until its consumers joined, stop it on exit.

        ``service`` is an orchestrator, or an object with ``start``/``stop`` and an
        ``orchestrator`` (its own start and stop are used).
        """
        orchestrator = service if isinstance(service, ServiceOrchestrator) else service.orchestrator
        self._services.append(orchestrator)
        await service.start()
        try:
            await self._wait(
                lambda: all(c.has_joined for c in orchestrator.consumers),
                ready_timeout_s,
                lambda: f"{orchestrator.service_name} consumers did not join their groups",
            )
            yield orchestrator
        finally:
            await service.stop()
            self._services.remove(orchestrator)

    # ------------------------------------------------------------------ input

    async def publish(
        self,
        topic: str,
        data: Payload,
        *,
        key: str | bytes | None = None,
        event_type: str | Enum | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish one enveloped event; returns its id."""
        return await self._producer.send(topic, key, data, event_type, correlation_id)

    async def publish_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Publish bytes exactly as given (for undecodable or foreign input)."""
        await self._producer.send_raw(topic, key, value, list(headers))

    # ------------------------------------------------------------------ waiting

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until every running flow finished every record on its partitions."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            behind = await self._behind()
            if not behind:
                return
            if loop.time() >= deadline:
                raise HarnessTimeoutError(
                    "service did not catch up: " + "; ".join(behind) + f" (after {timeout_s:g} s)"
                )
            await asyncio.sleep(0.005)

    async def wait_for(
        self, topic: str, count: int, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until ``topic`` holds at least ``count`` records; returns them decoded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = await self.read(topic)
            if len(found) >= count:
                return found
            if loop.time() >= deadline:
                raise HarnessTimeoutError(
                    f"{topic} has {len(found)} records, expected {count} (after {timeout_s:g} s)"
                )
            await asyncio.sleep(0.01)

    async def _behind(self) -> list[str]:
        """What is not finished yet, flow by flow (empty when idle)."""
        lines: list[str] = []
        for service in self._services:
            for flow in service.flows:
                if flow.dispatcher.in_flight:
                    lines.append(f"{flow.name}: {flow.dispatcher.in_flight} in flight")
                    continue
                if flow.checkpoint.pending:
                    flow.checkpoint.request()  # outputs and done marks settle at a checkpoint
                    lines.append(f"{flow.name}: {flow.checkpoint.pending} await their checkpoint")
                    continue
                uncommitted = flow.transactions.health() if flow.transactions else {}
                if uncommitted.get("records_awaiting_commit"):
                    flow.checkpoint.request()  # dead letters of an exactly-once flow
                    lines.append(f"{flow.name}: records of open transactions await a commit")
                    continue
                consumer = flow.consumer
                assignment = consumer.assignment()
                if not assignment:
                    continue
                client = consumer.client
                ends = await client.end_offsets(assignment)
                positions = consumer.committable_offsets()
                for tp, end in sorted(ends.items()):
                    # Nothing is in flight: the client's position counts too (it steps over
                    # transaction markers, which no record of the tracker stands for).
                    done = max(positions.get(tp, 0), await client.position(tp))
                    if done < end:
                        lines.append(
                            f"{flow.name} {tp.topic}[{tp.partition}]: {done} of {end} finished"
                        )
        return lines

    async def _wait(
        self, condition: Callable[[], bool], timeout_s: float, report: Callable[[], str]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            if loop.time() >= deadline:
                raise HarnessTimeoutError(f"{report()} (after {timeout_s:g} s)")
            await asyncio.sleep(0.002)

    # ------------------------------------------------------------------ output

    async def read_records(self, topic: str, *, committed: bool = True) -> list[FetchedRecord]:
        """Records of ``topic`` up to its current end (any backend).

        Committed records only, as a ``read_committed`` consumer sees them, unless
        ``committed=False`` (records of open and aborted transactions too).
        """
        if self.embedded:
            return self.records(topic, committed=committed)
        isolation = "read_committed" if committed else "read_uncommitted"
        return await read_topic(self.config, topic, isolation_level=isolation)

    async def read(self, topic: str, *, committed: bool = True) -> list[dict[str, Any]]:
        """Decoded envelopes on ``topic`` (any backend; undecodable records left out)."""
        return _decode_all(await self.read_records(topic, committed=committed))

    async def read_dead_letters(self, topic: str, suffix: str = ".dlq") -> list[DeadLetterRecord]:
        """Dead letters of ``topic`` (any backend)."""
        return _dead_letters(await self.read_records(f"{topic}{suffix}"))

    def records(self, topic: str, *, committed: bool = True) -> list[FetchedRecord]:
        """Raw records of ``topic`` in partition then offset order (embedded harness).

        Committed records only unless ``committed=False``, as :meth:`read_records`.
        """
        if topic not in self.broker.topics():
            return []
        return list(self.broker.records(topic, committed=committed))

    def produced(self, topic: str) -> list[dict[str, Any]]:
        """Decoded envelopes on ``topic`` (embedded harness; undecodable records left out)."""
        return _decode_all(self.records(topic))

    def dead_letters(self, topic: str, suffix: str = ".dlq") -> list[DeadLetterRecord]:
        """Dead letters of ``topic`` (its ``<topic><suffix>`` dead-letter topic; embedded)."""
        return _dead_letters(self.records(f"{topic}{suffix}"))


def _decode_all(records: Sequence[FetchedRecord]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for record in records:
        try:
            value = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _dead_letters(records: Sequence[FetchedRecord]) -> list[DeadLetterRecord]:
    return [DeadLetterRecord.of(r) for r in records]
