"""Revocation commits what finished, within the group's rebalance timeout, whatever happens.

(Delivery contract 7, 11.) The revocation wait is clearly below the rebalance
timeout, so a member with a slow handler commits its finished messages before
the group moves on, and the new owner does not handle them again; a failing
revocation hook never leaves stale bookkeeping behind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.types import TopicPartition
from tests.contract.conftest import Backend
from tests.contract.helpers import eventually, keys_for_partitions, service, tuned


@pytest.mark.kafka
async def test_finished_messages_are_committed_at_revocation_despite_a_slow_handler(
    backend: Backend,
) -> None:
    if backend.name != "kafka":
        pytest.skip("the rebalance timeout is the real group coordinator's")
    topic = await backend.create_topic("in", partitions=2)
    group = backend.topic("g")
    by_member: dict[str, list[int]] = {"a": [], "b": []}
    slow_started = asyncio.Event()

    def handler(member: str) -> Any:
        async def handle(event: dict[str, Any]) -> None:
            n = event["data"]["n"]
            if n == 99 and not slow_started.is_set():
                slow_started.set()
                await asyncio.sleep(60)  # cancelled when the revocation wait runs out
            by_member[member].append(n)

        return handle

    settings = tuned(backend.settings, commit_interval_ms=600_000, commit_every=100_000)
    harness = backend.harness
    key0 = keys_for_partitions(2)[0].decode()
    a = service(settings, handler("a"), topics=[topic], group=group, dedup=False)
    async with harness.running(a):
        for n in range(20):
            await harness.publish(topic, {"n": n}, key=key0)
        await harness.publish(topic, {"n": 99}, key=key0)
        await eventually(lambda: len(by_member["a"]) == 20, 30, "a to finish the first 20")
        await slow_started.wait()
        b = service(settings, handler("b"), topics=[topic], group=group, dedup=False)
        async with harness.running(b):
            await eventually(
                lambda: 99 in by_member["a"] + by_member["b"], 60, "the slow one handled again"
            )
    handled = by_member["a"] + by_member["b"]
    assert sorted(n for n in handled if n != 99) == list(range(20)), (
        "a message finished before the revocation was handled again"
    )
    assert handled.count(99) == 1


async def test_a_revocation_hook_that_raises_leaves_no_stale_bookkeeping(
    backend: Backend,
) -> None:
    topic = await backend.create_topic("in", partitions=2)
    group = backend.topic("g")
    harness = backend.harness
    for key in keys_for_partitions(2):
        await harness.publish(topic, {"n": 1}, key=key.decode())

    async def failing_hook(revoked: set[TopicPartition]) -> None:
        raise RuntimeError("hook failed")

    first = MessageConsumer(backend.settings.redpanda, [topic], group)
    first.set_revocation_hook(failing_hook)
    second = MessageConsumer(backend.settings.redpanda, [topic], group)
    await first.start()
    try:
        await eventually(lambda: len(first.assignment()) == 2, 30, "first to own both")
        fetched: list[ConsumedMessage] = []
        while len(fetched) < 2:
            fetched.extend(await first.fetch_batch(timeout_ms=200))
        await second.start()
        try:
            after: list[ConsumedMessage] = []
            deadline = asyncio.get_running_loop().time() + 30
            while len(first.assignment()) != 1 or len(second.assignment()) != 1:
                assert asyncio.get_running_loop().time() < deadline, "no rebalance"
                after.extend(await first.fetch_batch(timeout_ms=100))
                await second.fetch_batch(timeout_ms=100)
            kept = next(iter(first.assignment()))
            assert set(first.committable_offsets()) <= first.assignment()
            # The revoked assignment's messages no longer count; the kept partition's
            # message is delivered again, and committing it works.
            again = [m for m in after if m.topic_partition == kept]
            deadline = asyncio.get_running_loop().time() + 30
            while not again:
                assert asyncio.get_running_loop().time() < deadline, "no redelivery"
                again = [
                    m for m in await first.fetch_batch(timeout_ms=200) if m.topic_partition == kept
                ]
            assert not any(first.mark_finished(m) for m in fetched if m.topic_partition != kept)
            assert first.mark_finished(again[0])
            await first.flush()
            assert await first.client.committed(kept) == again[0].offset + 1
        finally:
            await second.stop()
    finally:
        await first.stop()
