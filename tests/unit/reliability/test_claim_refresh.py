"""Claims held by a flow are renewed while their messages wait, run or retry.

A claim found lost before its handler ran is claimed again first, so a worker
that took it meanwhile is never run twice (delivery contract 5, 6).
"""

from __future__ import annotations

import asyncio

import fakeredis
import orjson

from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.reliability.dedup_step import DedupStep
from core.streaming.reliability.deduplication_manager import ClaimResult, DeduplicationManager
from core.streaming.reliability.steps import Batch


def _message(event_id: str, offset: int = 0) -> ConsumedMessage:
    value = {"id": event_id, "type": "t", "source": "s", "data": {}}
    return ConsumedMessage.of(
        topic="in", partition=0, offset=offset, key=None, value=value, raw_value=orjson.dumps(value)
    )


async def _claimed(step: DedupStep, *messages: ConsumedMessage) -> None:
    step.claim_ahead(list(messages))
    await asyncio.gather(*step._claim_tasks)


async def test_held_claims_are_renewed_for_a_full_lifetime() -> None:
    redis = fakeredis.FakeAsyncRedis()
    dedup = DeduplicationManager(redis, "svc", consumer_group="g", processing_ttl_ms=1_000)
    step = DedupStep(dedup)
    message = _message("e1")
    await _claimed(step, message)
    await asyncio.sleep(0.8)  # almost expired
    assert (await dedup.state("e1"))[1] < 300
    await step.renew_now()
    assert 500 < (await dedup.state("e1"))[1] <= 1_000
    assert message in step.held


async def test_a_claim_lost_before_it_ran_is_claimed_again_and_the_other_run_is_respected() -> None:
    server = fakeredis.FakeServer()
    ours = DedupStep(
        DeduplicationManager(fakeredis.FakeAsyncRedis(server=server), "svc", consumer_group="g")
    )
    theirs = DeduplicationManager(
        fakeredis.FakeAsyncRedis(server=server), "svc", consumer_group="g"
    )
    message = _message("e2")
    await _claimed(ours, message)
    # Our claim lapses; another member claims the id and handles it.
    await ours.dedup.drop_claim("e2")
    assert await theirs.claim("e2") is ClaimResult.CLAIMED
    await ours.renew_now()
    assert message not in ours.held and message.claim is None
    runs: list[str] = []

    async def run(batch: Batch) -> None:
        for m in batch:
            if m.outcome is None:
                runs.append(m.value["id"])  # type: ignore[index]
                m.outcome = Outcome.HANDLED

    async def finish_theirs() -> None:
        await asyncio.sleep(0.1)
        await theirs.mark_done("e2")

    helper = asyncio.create_task(finish_theirs())
    await asyncio.wait_for(ours([message], run), 5)
    await helper
    assert runs == [] and message.outcome is Outcome.DUPLICATE


async def test_release_gives_back_only_our_own_token() -> None:
    redis = fakeredis.FakeAsyncRedis()
    step = DedupStep(DeduplicationManager(redis, "svc", consumer_group="g"))
    first, second = _message("e3", 0), _message("e3", 1)
    await _claimed(step, first)
    await _claimed(step, second)  # HELD_HERE: no token of its own
    assert second.claim is ClaimResult.HELD_HERE and second not in step.held
    await step.release([second])
    assert (await step.dedup.state("e3"))[0] is not None
    await step.release([first])
    assert await step.dedup.state("e3") == (None, 0)


async def test_an_earlier_copy_takes_the_claim_from_a_later_copy_queued_behind_it() -> None:
    """Two copies of one event on one partition whose claims finished out of order.

    The later copy's claim was made first (two fetches' claims run concurrently),
    so the earlier copy is told "held here". In an ordered flow the later copy is
    queued behind the earlier one and can only run after it: waiting for it would
    wait for ever (the claim is renewed, so it never expires). The earlier copy
    takes the claim over and runs; the later one is then the duplicate.
    """
    step = DedupStep(DeduplicationManager(fakeredis.FakeAsyncRedis(), "svc", consumer_group="g"))
    first, second = _message("e3", offset=0), _message("e3", offset=1)
    await _claimed(step, second)  # the later copy's claim lands first
    await _claimed(step, first)
    assert first.claim is ClaimResult.HELD_HERE and second.claim is ClaimResult.CLAIMED
    runs: list[int] = []

    async def handle(batch: Batch) -> None:
        for message in batch:
            if message.outcome is None:  # as the handler step does: skip what is decided
                runs.append(message.offset)
                message.outcome = Outcome.HANDLED

    await asyncio.wait_for(step([first], handle), 5)
    await asyncio.wait_for(step([second], handle), 5)
    assert runs == [0]
    assert second.outcome is Outcome.DUPLICATE
    assert step.holder_of("e3") is first


async def test_an_unordered_flow_waits_for_the_copy_that_holds_the_claim() -> None:
    """Without ordering the holder may already be on its way in another lane: no takeover."""
    step = DedupStep(
        DeduplicationManager(fakeredis.FakeAsyncRedis(), "svc", consumer_group="g"),
        ordered=False,
    )
    first, second = _message("e4", offset=0), _message("e4", offset=1)
    await _claimed(step, second)
    await _claimed(step, first)
    runs: list[int] = []

    async def handle(batch: Batch) -> None:
        for message in batch:
            if message.outcome is None:  # as the handler step does: skip what is decided
                runs.append(message.offset)
                message.outcome = Outcome.HANDLED

    waiting = asyncio.create_task(step([first], handle))
    await asyncio.sleep(0.3)
    assert not waiting.done() and runs == []
    await step([second], handle)
    await asyncio.wait_for(waiting, 5)
    assert runs == [1] and first.outcome is Outcome.DUPLICATE
