"""A transaction that outlives ``transaction_timeout_ms`` is aborted by the broker; the
partition, still this member's, gets a new producer and its work is done again once."""

from __future__ import annotations

import asyncio
from typing import Any

from core.config.settings import RedpandaSettings
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import eventually, tuned


async def test_a_partition_fenced_by_a_transaction_timeout_is_taken_back() -> None:
    async with StreamTestHarness() as harness:
        redpanda = RedpandaSettings(
            bootstrap_servers=harness.broker_url,
            session_timeout_ms=1_500,
            heartbeat_interval_ms=300,
            rebalance_timeout_ms=3_000,
        )
        settings = tuned(
            harness.settings.model_copy(update={"redpanda": redpanda}),
            processing_guarantee="exactly_once",
            transaction_timeout_ms=1_000,
            commit_interval_ms=400,
            revocation_timeout_s=1.0,
        )
        attempts: list[int] = []
        service: ServiceOrchestrator

        async def copy(event: dict[str, Any]) -> None:
            attempts.append(event["data"]["n"])
            await service.producer.enqueue("out", None, {"n": event["data"]["n"]})
            if len(attempts) == 1:
                await asyncio.sleep(1.3)  # the transaction outlives its timeout

        service = (
            StreamServiceBuilder("copier", redpanda, settings)
            .add_producer(["out"])
            .add_consumer_handler(["in"], "copier", copy)
            .build()
        )
        harness.broker.create_topic("in", 1)
        async with harness.running(service):
            await harness.publish("in", {"n": 1}, key="k")
            flow = service.flows[0]
            await eventually(
                lambda: flow.health()["transactions"]["fenced_total"] == 1, 10, "the fencing"
            )
            await eventually(lambda: len(attempts) == 2, 15, "the work done again")
            await harness.wait_idle(timeout_s=15)
        outputs = [e["data"]["n"] for e in harness.produced("out")]
        assert outputs == [1], "the aborted copy is gone, the second one committed"
        assert len(harness.broker.records("out", committed=False)) == 2
