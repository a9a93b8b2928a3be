"""Test a built service on a private embedded broker, with the real reliability path.

::

    async with StreamTestHarness() as harness:
        service = build_my_service(harness.settings)
        async with harness.running(service):
            await harness.publish("orders", {"qty": 1}, key="o-1", event_type="order.created")
            await harness.wait_idle()
            assert harness.produced("fills")[0]["data"]["qty"] == 1

``wait_idle`` waits on the service's own progress (every flow has finished
every record up to the end of its topics), never on fixed sleeps, and fails with
a message that says which flow is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any
from uuid import uuid4

import orjson
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.embedded import InMemoryBroker, drop_broker, get_broker
from core.streaming.infrastructure.message_producer import MessageProducer, Payload
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.types import Record, TopicPartition


class HarnessTimeoutError(AssertionError):
    """The service did not reach the awaited state in time."""


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered record: original bytes and the decoded ``dlq.*`` headers."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def error_type(self) -> str | None:
        """Exception class that sent the message here."""
        return self.headers.get("dlq.exception.type")


class StreamTestHarness:
    """A private embedded broker and dedup store, and helpers to drive a service."""

    def __init__(self, settings: Settings | None = None, *, namespace: str = "test") -> None:
        name = f"memory://harness-{uuid4().hex[:12]}"
        base = settings or Settings()
        self.settings = base.model_copy(
            update={
                "broker_namespace": base.broker_namespace if settings else namespace,
                "redpanda": base.redpanda.model_copy(update={"bootstrap_servers": name}),
                "redis": RedisSettings(url=SecretStr(name)),
            }
        )
        self.broker_url = name
        self._producer = MessageProducer(self.config, "test-harness")
        self._services: list[ServiceOrchestrator] = []

    @property
    def config(self) -> RedpandaSettings:
        """Broker settings pointing at the harness's embedded broker."""
        return self.settings.redpanda

    @property
    def broker(self) -> InMemoryBroker:
        """The embedded broker, for inspection."""
        return get_broker(self.broker_url)

    async def __aenter__(self) -> StreamTestHarness:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for service in reversed(self._services):
            await service.stop()
        await self._producer.stop()
        drop_broker(self.broker_url)

    @asynccontextmanager
    async def running(
        self, service: ServiceOrchestrator, *, ready_timeout_s: float = 5.0
    ) -> AsyncIterator[ServiceOrchestrator]:
        """Start ``service``, wait until its consumers joined, stop it on exit."""
        self._services.append(service)
        await service.start()
        try:
            await self._wait(
                lambda: all(c.has_joined for c in service.consumers),
                ready_timeout_s,
                lambda: f"{service.service_name} consumers did not join their groups",
            )
            yield service
        finally:
            await service.stop()
            self._services.remove(service)

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

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until every running flow finished every record on its topics."""
        await self._wait(self._all_caught_up, timeout_s, self._behind_report)

    async def wait_for(
        self, topic: str, count: int, timeout_s: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until ``topic`` holds at least ``count`` records; returns them decoded."""
        await self._wait(
            lambda: (
                len(self.broker.records(topic)) >= count if topic in self.broker.topics() else False
            ),
            timeout_s,
            lambda: f"{topic} has {len(self.produced(topic))} records, expected {count}",
        )
        return self.produced(topic)

    def _all_caught_up(self) -> bool:
        broker = self.broker
        for service in self._services:
            for flow in service.flows:
                positions = flow.consumer.committable_offsets()
                if flow.dispatcher.in_flight:
                    return False
                for topic in flow.consumer.topics:
                    if topic not in broker.topics():
                        continue
                    for partition in range(broker.partition_count(topic)):
                        tp = TopicPartition(topic, partition)
                        end = broker.end_offset(tp)
                        if end == 0:
                            continue
                        if (
                            positions.get(tp, broker.committed(flow.consumer.group_id, tp) or 0)
                            < end
                        ):
                            return False
        return True

    def _behind_report(self) -> str:
        broker = self.broker
        lines = []
        for service in self._services:
            for flow in service.flows:
                positions = flow.consumer.committable_offsets()
                for topic in flow.consumer.topics:
                    if topic not in broker.topics():
                        continue
                    for partition in range(broker.partition_count(topic)):
                        tp = TopicPartition(topic, partition)
                        end = broker.end_offset(tp)
                        done = positions.get(tp, broker.committed(flow.consumer.group_id, tp) or 0)
                        if done < end:
                            lines.append(
                                f"{flow.name} {topic}[{partition}]: {done} of {end} finished"
                            )
        return "service did not catch up: " + ("; ".join(lines) or "messages still in flight")

    async def _wait(self, condition: Any, timeout_s: float, report: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            if loop.time() >= deadline:
                raise HarnessTimeoutError(f"{report()} (after {timeout_s:g} s)")
            await asyncio.sleep(0.002)

    # ------------------------------------------------------------------ output

    def records(self, topic: str) -> list[Record]:
        """Raw records of ``topic`` in partition then offset order."""
        if topic not in self.broker.topics():
            return []
        return list(self.broker.records(topic))

    def produced(self, topic: str) -> list[dict[str, Any]]:
        """Decoded envelopes on ``topic`` (undecodable records are left out)."""
        out: list[dict[str, Any]] = []
        for record in self.records(topic):
            try:
                value = orjson.loads(record.value or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def dead_letters(self, topic: str, suffix: str = ".dlq") -> list[DeadLetter]:
        """Dead letters of ``topic`` (its ``<topic><suffix>`` dead-letter topic)."""
        return [
            DeadLetter(r.key, r.value, _decode_headers(r.headers))
            for r in self.records(f"{topic}{suffix}")
        ]


def _decode_headers(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: v.decode("utf-8", "replace") for k, v in items}
