"""A copier service in its own process, for the kill -9 test of exactly-once flows.

Usage: ``python -m tests.integration.faults.eos_copier '<json spec>'`` with keys
``bootstrap``, ``source``, ``sink``, ``group``, ``guarantee`` (``exactly_once`` or
``at_least_once``) and ``commit_interval_ms``. For every input envelope it sends
one output envelope ``{"src": <input id>}`` to ``sink``. It prints ``ready`` once
it owns partitions and runs until it is killed or sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from core.config.settings import RedpandaSettings, Settings
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

# Short group timeouts: the next incarnation gets the partitions soon after a kill.
GROUP_TIMEOUTS = {
    "session_timeout_ms": 3_000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 6_000,
}


def build(spec: dict[str, Any]) -> ServiceOrchestrator:
    base = Settings()
    settings = base.model_copy(
        update={
            "redpanda": RedpandaSettings(
                bootstrap_servers=spec["bootstrap"], connect_timeout_s=20, **GROUP_TIMEOUTS
            ),
            "reliability": base.reliability.model_copy(
                update={
                    "processing_guarantee": spec["guarantee"],
                    "commit_interval_ms": spec["commit_interval_ms"],
                    "revocation_timeout_s": 2.0,
                    "dedup_enabled": False,
                }
            ),
        }
    )
    service: ServiceOrchestrator
    sink = spec["sink"]

    async def copy(event: dict[str, Any]) -> None:
        await service.producer.enqueue(sink, None, {"src": event["id"]}, "copy")

    service = (
        StreamServiceBuilder("eos-copier", settings.redpanda, settings)
        .add_producer([sink])
        .add_consumer_handler([spec["source"]], spec["group"], copy)
        .ensure_topics(False)
        .build()
    )
    return service


async def main(spec: dict[str, Any]) -> int:
    service = build(spec)
    await service.start()
    await asyncio.gather(*(c.wait_for_assignment(60) for c in service.consumers))
    print("ready", flush=True)
    return await service.serve()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]))))
