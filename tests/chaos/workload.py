"""The chaos workload: a counting service with an external side effect, one process each.

    python -m tests.chaos.workload NAME

Built with ``StreamServiceBuilder`` from ``TRADESTREAM_*`` settings, like any
service. For each input event it

1. appends ``S <event id> <monotonic time>`` to its side-effect log (a handler
   execution began),
2. raises ``PermanentError`` for a poison event (dead-lettered),
3. waits ``CHAOS_HANDLER_MS`` (the work), publishes one output event, and
4. appends ``E <event id> <monotonic time>``: the business side effect that
   dedup is meant to make happen once.

The log is written with unbuffered ``os.write`` on an ``O_APPEND`` file, one
per process, so what was written survives ``kill -9``. ``time.monotonic`` is
the system-wide CLOCK_MONOTONIC on Linux, comparable with the feeder's.

Environment: ``CHAOS_RUN_DIR`` (logs), ``CHAOS_INPUT``, ``CHAOS_OUTPUT``,
``CHAOS_GROUP``, ``CHAOS_HANDLER_MS`` (default 5), ``CHAOS_DEDUP`` (``0``
turns dedup off), ``CHAOS_EFFECTS`` (``0``: no side-effect log; an empty
``CHAOS_OUTPUT``: no output event; both for throughput runs). A
``redis+cluster://`` Redis URL puts dedup on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from core.config.settings import load_settings
from core.streaming.errors import PermanentError
from core.streaming.logging_setup import configure_logging
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

SERVICE = "chaos-counter"
logger = logging.getLogger("chaos.workload")


class SideEffectLog:
    """Append-only lines, one ``os.write`` each (atomic for short lines with O_APPEND)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, kind: str, event_id: str) -> None:
        os.write(self._fd, f"{kind} {event_id} {time.monotonic():.6f}\n".encode())

    def close(self) -> None:
        os.close(self._fd)


def _no_log(kind: str, event_id: str) -> None:
    return None


def build(name: str) -> tuple[ServiceOrchestrator, SideEffectLog]:
    """The counting service of one instance, and its side-effect log."""
    settings = load_settings()
    run_dir = os.environ["CHAOS_RUN_DIR"]
    source = os.environ["CHAOS_INPUT"]
    sink = os.environ.get("CHAOS_OUTPUT", "")
    group = os.environ["CHAOS_GROUP"]
    work_s = float(os.environ.get("CHAOS_HANDLER_MS", "5")) / 1000
    effects = SideEffectLog(os.path.join(run_dir, f"effects-{name}-{os.getpid()}.log"))
    log = effects.write if os.environ.get("CHAOS_EFFECTS", "1") == "1" else _no_log
    service: ServiceOrchestrator

    async def count(event: dict[str, Any]) -> None:
        event_id = str(event["id"])
        log("S", event_id)
        data = event.get("data") or {}
        if data.get("poison"):
            raise PermanentError(f"poison event {data.get('n')}")
        if work_s:
            await asyncio.sleep(work_s)
        if sink:
            await service.producer.send(
                sink, str(data.get("n")), {"src": event_id}, "chaos.counted"
            )
        log("E", event_id)

    builder = StreamServiceBuilder(SERVICE, settings.redpanda, settings).add_consumer_handler(
        [source], group, count
    )
    if sink:
        builder.add_producer(topics=[sink])
    if os.environ.get("CHAOS_DEDUP", "1") == "1":
        builder.with_redis()
    service = builder.build()
    return service, effects


async def main(name: str) -> int:
    configure_logging("console", os.environ.get("CHAOS_LOG_LEVEL", "WARNING"))
    service, effects = build(name)
    ready = os.path.join(os.environ["CHAOS_RUN_DIR"], f"ready-{name}-{os.getpid()}")

    async def announce() -> None:
        while True:
            if (await service.health())["ready"]:
                break
            await asyncio.sleep(0.1)
        fd = os.open(ready, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, f"{time.monotonic()}".encode())
        os.close(fd)

    try:
        await service.start()
        task = asyncio.ensure_future(announce())
        try:
            return await service.serve()
        finally:
            task.cancel()
    finally:
        effects.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
