"""The checkpoint, directly: outputs first, then done marks, then contiguous offsets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import orjson
import pytest

from core.config.settings import RedpandaSettings
from core.streaming.clients import create_producer
from core.streaming.embedded import drop_broker
from core.streaming.errors import OutputFailedError
from core.streaming.infrastructure.consumed_message import ConsumedMessage, Outcome
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.orchestration.checkpoint import Checkpoint
from core.streaming.reliability.dedup_step import DedupStep
from core.streaming.reliability.deduplication_manager import (
    DeduplicationManager,
    DedupUnavailableError,
)
from core.streaming.types import TopicPartition

TP = TopicPartition("in", 0)


@pytest.fixture
async def consumer() -> AsyncIterator[MessageConsumer]:
    """A consumer that owns partition 0 of ``in`` on a private embedded broker."""
    url = "memory://checkpoint-unit"
    config = RedpandaSettings(bootstrap_servers=url, topic_partitions=1)
    producer = create_producer(config)
    await producer.start()
    for n in range(5):
        await (await producer.send("in", b"{}", key=str(n).encode()))
    await producer.stop()
    member = MessageConsumer(config, ["in"], "g")
    await member.start()
    assert await member.wait_for_assignment(5)
    yield member
    await member.stop()
    drop_broker(url)


def _fetched(consumer: MessageConsumer, count: int) -> list[ConsumedMessage]:
    """``count`` messages of partition 0 as if fetched (offsets 0..count-1), handled."""
    state = consumer._offsets[TP]
    state.fetched_many(list(range(count)))
    out = []
    for offset in range(count):
        value = {"id": f"e{offset}", "type": "t", "source": "s", "data": {}}
        message = ConsumedMessage.of(
            topic="in",
            partition=0,
            offset=offset,
            key=None,
            value=value,
            raw_value=orjson.dumps(value),
            generation=state.generation,
        )
        message.outcome = Outcome.HANDLED
        out.append(message)
    return out


async def test_messages_without_outputs_or_claims_are_finished_at_once(
    consumer: MessageConsumer,
) -> None:
    checkpoint = Checkpoint(consumer)
    messages = _fetched(consumer, 3)
    checkpoint.add(messages[:2])
    assert checkpoint.pending == 0
    assert consumer.pending_offsets() == {TP: 2}
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 2


async def test_a_failed_output_holds_the_commit_and_goes_back_to_the_error_path(
    consumer: MessageConsumer,
) -> None:
    recovered: list[tuple[int, BaseException]] = []
    checkpoint = Checkpoint(consumer, recover=lambda m, e: recovered.append((m.offset, e)))
    loop = asyncio.get_running_loop()
    ok, failed = loop.create_future(), loop.create_future()
    ok.set_result(None)
    failed.set_exception(TimeoutError("no ack"))
    messages = _fetched(consumer, 3)
    messages[0].outputs = [ok]
    messages[1].outputs = [failed]
    checkpoint.add(messages)
    assert checkpoint.pending == 2
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 1, "stops before the failed message"
    assert [offset for offset, _ in recovered] == [1]
    assert isinstance(recovered[0][1], OutputFailedError)
    assert messages[1].outcome is Outcome.FAILED and checkpoint.pending == 0


async def _claimed(
    consumer: MessageConsumer, count: int
) -> tuple[DedupStep, list[ConsumedMessage]]:
    """A dedup step on fakeredis and ``count`` messages it claimed, then handled."""
    step = DedupStep(DeduplicationManager(fakeredis.FakeAsyncRedis(), "svc", consumer_group="g"))
    messages = _fetched(consumer, count)
    for message in messages:
        message.outcome = None
    step.claim_ahead(messages)
    await asyncio.gather(*step._claim_tasks)
    for message in messages:
        message.outcome = Outcome.HANDLED
    return step, messages


async def test_done_marks_survive_a_cancelled_write_and_are_written_later(
    consumer: MessageConsumer,
) -> None:
    step, messages = await _claimed(consumer, 2)
    checkpoint = Checkpoint(consumer, dedup=step)
    checkpoint.add(messages)
    gate = asyncio.Event()
    real = step.dedup.mark_done_many

    async def stalled(ids: list[str]) -> None:
        await gate.wait()
        await real(ids)

    step.dedup.mark_done_many = stalled  # type: ignore[method-assign]
    commit = asyncio.create_task(checkpoint.commit())
    await asyncio.sleep(0.05)
    commit.cancel()
    await asyncio.gather(commit, return_exceptions=True)
    assert checkpoint.pending == 2, "marks stay until written"
    assert await consumer.client.committed(TP) is None
    gate.set()
    assert await checkpoint.commit()
    assert await step.dedup.state("e0") == ("done", 0)
    assert await step.dedup.state("e1") == ("done", 0)
    assert await consumer.client.committed(TP) == 2


async def test_a_commit_that_cannot_settle_in_time_commits_nothing_of_its_window(
    consumer: MessageConsumer,
) -> None:
    checkpoint = Checkpoint(consumer, timeout_s=0.1)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    messages = _fetched(consumer, 2)
    messages[1].outputs = [never]
    checkpoint.add(messages)
    await checkpoint.commit()
    assert await consumer.client.committed(TP) == 1
    assert checkpoint.pending == 1 and checkpoint.last_error is not None
    never.set_result(None)
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 2


def test_the_policy_is_due_by_count_or_time(consumer: MessageConsumer) -> None:
    from core.streaming.infrastructure.offset_tracker import CommitPolicy

    checkpoint = Checkpoint(consumer, policy=CommitPolicy(every=2, interval_ms=3_600_000))
    assert not checkpoint.due()
    messages = _fetched(consumer, 2)
    checkpoint.add(messages[:1])
    assert not checkpoint.due()
    checkpoint.add(messages[1:])
    assert checkpoint.due()
    timed = Checkpoint(consumer, policy=CommitPolicy(every=1_000, interval_ms=0))
    timed.add(_fetched(consumer, 1))
    assert timed.due()


async def test_handled_runs_wait_for_their_marks_as_offsets_and_claims(
    consumer: MessageConsumer,
) -> None:
    step, messages = await _claimed(consumer, 3)
    checkpoint = Checkpoint(consumer, dedup=step)
    assert checkpoint.add(messages) == []
    # No message is kept: its offset and its claim are.
    assert checkpoint._window == [] and step.held == {}
    assert checkpoint.pending == 3 and step.settled.claim_count == 3
    assert step.health()["held_claims"] == 3
    assert consumer.pending_offsets() == {TP: 0}, "not finished before the marks are written"
    assert await checkpoint.commit()
    assert [await step.dedup.state(f"e{n}") for n in range(3)] == [("done", 0)] * 3
    assert await consumer.client.committed(TP) == 3
    assert checkpoint.pending == 0 and step.settled.claim_count == 0


async def test_marks_that_cannot_be_written_keep_their_offsets_uncommitted(
    consumer: MessageConsumer,
) -> None:
    step, messages = await _claimed(consumer, 2)
    checkpoint = Checkpoint(consumer, dedup=step)
    checkpoint.add(messages[:1])
    real = step.dedup.mark_done_many

    async def failing(ids: list[str]) -> None:
        raise DedupUnavailableError("store down")

    step.dedup.mark_done_many = failing  # type: ignore[method-assign]
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 0, "nothing past the unmarked message"
    assert checkpoint.pending == 1 and checkpoint.last_error is not None
    checkpoint.add(messages[1:])  # a later run of the same partition joins it, in order
    step.dedup.mark_done_many = real  # type: ignore[method-assign]
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 2
    assert await step.dedup.state("e0") == ("done", 0)
    assert await step.dedup.state("e1") == ("done", 0)


async def test_settled_claims_are_renewed_and_a_lost_one_only_skips_its_mark(
    consumer: MessageConsumer,
) -> None:
    step, messages = await _claimed(consumer, 2)
    checkpoint = Checkpoint(consumer, dedup=step)
    checkpoint.add(messages)
    token, left = await step.dedup.state("e0")
    assert token is not None
    await asyncio.sleep(0.01)
    redis = step.dedup.redis_client
    await redis.hdel(step.dedup.claims_key(0), "e1")  # e1's claim lapsed
    await step.renew_now()
    assert (await step.dedup.state("e0"))[1] > left - 10, "renewed"
    assert step.settled.claim_count == 1
    assert await checkpoint.commit()
    assert await consumer.client.committed(TP) == 2, "its offset is still committed"
    assert await step.dedup.state("e0") == ("done", 0)
    assert await step.dedup.state("e1") == (None, 0)


async def test_abandoning_gives_settled_claims_back(consumer: MessageConsumer) -> None:
    step, messages = await _claimed(consumer, 2)
    checkpoint = Checkpoint(consumer, dedup=step)
    checkpoint.add(messages)
    await checkpoint.abandon({TP})
    assert checkpoint.pending == 0 and step.health()["held_claims"] == 0
    assert await step.dedup.state("e0") == (None, 0)
    assert await step.dedup.state("e1") == (None, 0)
    assert await consumer.client.committed(TP) is None
