"""The lag metric says what a restart would deliver again (delivery contract 14).

Besides the fetch lag (high watermark minus fetch position), each partition
reports its committed lag (high watermark minus the committed offset).
"""

from __future__ import annotations

from typing import Any

from core.streaming.testing import StreamTestHarness
from tests.contract.helpers import eventually, service, tuned


def _gauge(samples: bytes, name: str) -> float:
    total = 0.0
    for line in samples.decode().splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_committed_lag_counts_handled_but_uncommitted_messages() -> None:
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    async with StreamTestHarness() as harness:
        harness.broker.create_topic("in", 1)
        settings = tuned(harness.settings, commit_interval_ms=3_600_000, commit_every=1_000_000)
        orchestrator = service(settings, handle, dedup=False)
        flow = orchestrator.flows[0]
        flow.options = type(flow.options)(**{**flow.options.__dict__, "lag_refresh_s": 0.0})
        metrics = orchestrator.metrics
        assert metrics is not None
        async with harness.running(orchestrator):
            for n in range(5):
                await harness.publish("in", {"n": n}, key="k")
            await eventually(lambda: len(handled) == 5, 10, "five handled")
            await eventually(
                lambda: _gauge(metrics.exposition(), "tradestream_consumer_committed_lag") == 5,
                10,
                "committed lag of five",
            )
            assert _gauge(metrics.exposition(), "tradestream_consumer_lag") == 0
            await flow.checkpoint.commit()
            await harness.publish("in", {"n": 5}, key="k")
            await eventually(lambda: len(handled) == 6, 10, "the sixth handled")
            await eventually(
                lambda: _gauge(metrics.exposition(), "tradestream_consumer_committed_lag") == 1,
                10,
                "committed lag of one after the commit",
            )
