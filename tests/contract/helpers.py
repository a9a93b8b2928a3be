"""Small builders shared by the delivery-contract tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from core.config.settings import Settings
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

Handler = Callable[[dict[str, Any]], Awaitable[None]]


def envelope(event_id: str, data: dict[str, Any] | None = None) -> bytes:
    """A valid envelope's bytes with a fixed id."""
    return orjson.dumps(
        {
            "id": event_id,
            "type": "test.event",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "contract-test",
            "correlation_id": None,
            "causation_id": None,
            "schema_version": 1,
            "data": data or {},
        }
    )


def service(
    settings: Settings,
    handler: Handler,
    *,
    topics: list[str] | None = None,
    group: str = "g",
    name: str = "svc",
    dedup: bool = True,
    producer: bool = False,
    **overrides: Any,
) -> ServiceOrchestrator:
    """One flow over ``topics`` (default ``["in"]``) with dedup on unless asked otherwise."""
    builder = StreamServiceBuilder(name, settings.redpanda, settings)
    if dedup:
        builder.with_redis()
    if producer:
        builder.add_producer()
    builder.add_consumer_handler(topics or ["in"], group, handler, **overrides)
    return builder.build()


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


class Concurrency:
    """Counts how many copies of a handler body run at once, per key."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.runs: dict[str, int] = {}

    def enter(self, key: str) -> None:
        self.running[key] = self.running.get(key, 0) + 1
        self.runs[key] = self.runs.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.running[key])

    def leave(self, key: str) -> None:
        self.running[key] -= 1


def tuned(settings: Settings, **reliability: Any) -> Settings:
    """``settings`` with some reliability fields changed."""
    return settings.model_copy(
        update={"reliability": settings.reliability.model_copy(update=reliability)}
    )


def keys_for_partitions(partitions: int) -> list[bytes]:
    """One key per partition, in partition order, by the broker's key partitioner."""
    from core.streaming.embedded import partition_for_key

    found: dict[int, bytes] = {}
    n = 0
    while len(found) < partitions:
        key = f"k{n}".encode()
        found.setdefault(partition_for_key(key, partitions), key)
        n += 1
    return [found[p] for p in range(partitions)]
