"""A failed commit on the hot path is retried later, never fatal, never skips a message."""

from __future__ import annotations

import asyncio
from typing import Any

from core.streaming.errors import CommitError
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from core.streaming.types import TopicPartition


async def _noop(event: dict[str, Any]) -> None:
    return None


async def test_failed_commit_is_retried_and_the_loop_keeps_running() -> None:
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    async with StreamTestHarness() as harness:
        service = (
            StreamServiceBuilder("flaky-commits", harness.config, harness.settings)
            .add_consumer_handler(
                ["in"], "fc.g", handle, commit_policy=CommitPolicy.per_message_sync()
            )
            .build()
        )
        async with harness.running(service):
            client = service.consumers[0].client
            real_commit = client.commit
            failures = 0

            async def commit_failing_twice(offsets: Any) -> None:
                nonlocal failures
                if failures < 2:
                    failures += 1
                    raise CommitError("rebalance in progress")
                await real_commit(offsets)

            client.commit = commit_failing_twice  # type: ignore[method-assign]
            for n in range(4):
                await harness.publish("in", {"n": n}, key="k")
            await harness.wait_idle()
            assert service.flows[0].layer.counters.commit_failures == 2
            health = await service.health()
        assert handled == [0, 1, 2, 3]
        assert health["live"]
        partition = next(r.partition for r in harness.records("in"))
        assert harness.broker.committed("fc.g", TopicPartition("in", partition)) == 4


async def test_per_message_policy_with_dedup_commits_every_message() -> None:
    async with StreamTestHarness() as harness:
        service = (
            StreamServiceBuilder("pm-dedup", harness.config, harness.settings)
            .with_redis()
            .add_consumer_handler(
                ["in"], "pmd.g", _noop, commit_policy=CommitPolicy.per_message_sync()
            )
            .build()
        )
        async with harness.running(service):
            for n in range(6):
                await harness.publish("in", {"n": n}, key="k")
            await harness.wait_idle()
            assert service.flows[0].layer.deduplicator is not None
            assert service.consumers[0].commits == 6


async def test_stop_with_a_blocked_dead_letter_does_not_wait_for_the_drain_timeout() -> None:
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    async with StreamTestHarness() as harness:
        settings = harness.settings.model_copy(
            update={
                "reliability": harness.settings.reliability.model_copy(
                    update={"drain_timeout_s": 60.0}
                )
            }
        )
        service = (
            StreamServiceBuilder("blocked", harness.config, settings)
            .add_consumer_handler(["in"], "blocked.g", handle, dead_letter_topic="no such topic!")
            .ensure_topics(False)
            .build()
        )
        await service.start()
        await harness.publish_raw("in", b"not json", key=b"k")
        for n in range(3):
            await harness.publish("in", {"n": n}, key="k")  # same lane, behind the poison
        flow = service.flows[0]
        for _ in range(500):
            if flow.layer.error_handler.dead_letter_blocked:
                break
            await asyncio.sleep(0.01)
        assert flow.layer.error_handler.dead_letter_blocked
        # Far below the 60 s drain timeout: the blocked write gives up and the
        # messages queued behind it are dropped, uncommitted.
        await asyncio.wait_for(service.stop(), 10)
        assert handled == []
        partition = next(r.partition for r in harness.records("in"))
        assert harness.broker.committed("blocked.g", TopicPartition("in", partition)) in (None, 0)
