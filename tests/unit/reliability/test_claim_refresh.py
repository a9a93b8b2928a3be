"""A batch claim that waited too long in a lane is renewed, or claimed again if it was lost."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import orjson

from core.config.settings import RedpandaSettings
from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.reliability.deduplication_manager import ClaimResult, DeduplicationManager
from core.streaming.reliability.error_handler import ErrorHandler
from core.streaming.reliability.reliability_layer import MessageOutcome, ReliabilityLayer


def _message(event_id: str, claimed_at: float) -> ConsumedMessage:
    value = {"id": event_id, "type": "t", "data": {}}
    message = ConsumedMessage.of(
        topic="in", partition=0, offset=0, key=None, value=value, raw_value=orjson.dumps(value)
    )
    message.claimed_at = claimed_at
    return message


def _layer(dedup: DeduplicationManager, calls: list[str]) -> ReliabilityLayer:
    async def handle(event: dict[str, Any]) -> None:
        calls.append(event["id"])

    consumer = MessageConsumer(RedpandaSettings(bootstrap_servers="memory://refresh"), ["in"], "g")
    return ReliabilityLayer(
        "svc",
        handle,
        consumer,
        deduplicator=dedup,
        error_handler=ErrorHandler(None, "svc", dead_letter_enabled=False),
    )


async def test_an_old_claim_still_ours_is_renewed_and_the_handler_runs() -> None:
    redis = fakeredis.FakeAsyncRedis()
    dedup = DeduplicationManager(redis, "svc", consumer_group="g", processing_ttl_ms=1_000)
    assert await dedup.claim("e1") is ClaimResult.CLAIMED
    await redis.pexpire(dedup.key_for("e1"), 200)  # almost expired
    calls: list[str] = []
    outcome = await _layer(dedup, calls).process_message(_message("e1", 0.0), ClaimResult.CLAIMED)
    assert outcome is MessageOutcome.HANDLED and calls == ["e1"]
    # Renewed for a full processing_ttl_ms; the done mark is still buffered.
    assert await redis.get(dedup.key_for("e1")) == dedup.owner_value.encode()
    assert await redis.pttl(dedup.key_for("e1")) > 500


async def test_a_lost_claim_is_claimed_again_and_another_workers_run_is_respected() -> None:
    server = fakeredis.FakeServer()
    ours = DeduplicationManager(
        fakeredis.FakeAsyncRedis(server=server), "svc", consumer_group="g", local_cache_size=0
    )
    theirs = DeduplicationManager(
        fakeredis.FakeAsyncRedis(server=server), "svc", consumer_group="g"
    )
    assert await ours.claim("e2") is ClaimResult.CLAIMED
    await ours.redis_client.delete(ours.key_for("e2"))  # our claim expired while queued
    assert await theirs.claim("e2") is ClaimResult.CLAIMED  # another worker took it
    calls: list[str] = []
    answers: list[ClaimResult] = []
    claim = ours.claim

    async def counted_claim(event_id: str) -> ClaimResult:
        answers.append(await claim(event_id))
        return answers[-1]

    ours.claim = counted_claim  # type: ignore[method-assign]
    task = asyncio.create_task(
        _layer(ours, calls).process_message(_message("e2", 0.0), ClaimResult.CLAIMED)
    )
    deadline = asyncio.get_running_loop().time() + 10
    while answers.count(ClaimResult.IN_PROGRESS) < 2:  # it asks again and again
        assert asyncio.get_running_loop().time() < deadline, answers
        await asyncio.sleep(0.01)
    assert calls == [] and not task.done()  # waits for the other worker
    await theirs.mark_done("e2")
    assert await asyncio.wait_for(task, 10) is MessageOutcome.DUPLICATE
    assert calls == []
