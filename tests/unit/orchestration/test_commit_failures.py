"""A failed commit on the hot path is retried later, never fatal, never skips a message."""

from __future__ import annotations

from typing import Any

from core.streaming.errors import CommitError
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from core.streaming.types import TopicPartition


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
            assert service.consumers[0].commit_failures == 2
            health = await service.health()
        assert handled == [0, 1, 2, 3]
        assert health["live"]
        partition = next(r.partition for r in harness.records("in"))
        assert harness.broker.committed("fc.g", TopicPartition("in", partition)) == 4
