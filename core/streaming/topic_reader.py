"""Read topics up to their current end, or follow them, without committing anything.

Used by tools and tests (dead-letter inspection, the test harness, services that
rebuild their state from their own topics at start) on any backend behind the
client surface. Every reader first asks the broker which topics exist: a topic
that does not exist reads as empty at once instead of waiting for a timeout.
Readers use a throwaway consumer group and never commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import uuid4

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerClient, ConsumerOptions, create_admin, create_consumer
from core.streaming.types import FetchedRecord, TopicPartition

BatchCallback = Callable[[Sequence[FetchedRecord]], None]
"""Receives records in fetch order (per partition in offset order)."""


@dataclass
class ScanResult:
    """What a scan covered: per partition, where it started and the end it read up to."""

    starts: dict[TopicPartition, int] = field(default_factory=dict)
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    records: int = 0
    missing_topics: list[str] = field(default_factory=list)


async def existing_topics(config: RedpandaSettings, topics: Sequence[str]) -> set[str]:
    """Which of ``topics`` exist on the broker (one metadata request)."""
    admin = create_admin(config)
    await admin.start()
    try:
        known = await admin.list_topics()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return {t for t in topics if t in known}


async def topic_exists(config: RedpandaSettings, topic: str) -> bool:
    """True when ``topic`` exists on the broker."""
    return topic in await existing_topics(config, [topic])


def _reader(config: RedpandaSettings, topics: Sequence[str]) -> ConsumerClient:
    return create_consumer(
        config, list(topics), f"tradestream-reader-{uuid4().hex[:10]}", ConsumerOptions("earliest")
    )


async def _wait_assignment(
    consumer: ConsumerClient, topics: set[str], deadline: float, what: str
) -> set[TopicPartition]:
    """Poll until the reader owns a partition of every topic (records fetched meanwhile are
    dropped: the caller seeks to where it wants to start)."""
    loop = asyncio.get_running_loop()
    while True:
        await consumer.getmany(timeout_ms=50)
        assignment = consumer.assignment()
        if topics <= {tp.topic for tp in assignment}:
            return assignment
        if loop.time() > deadline:
            raise TimeoutError(f"reading {what}: no partitions assigned in time")


async def scan_topics(
    config: RedpandaSettings,
    topics: Sequence[str],
    on_batch: BatchCallback,
    *,
    tail: int | Mapping[str, int] | None = None,
    start_offsets: Mapping[TopicPartition, int] | None = None,
    timeout_s: float = 30.0,
) -> ScanResult:
    """Feed ``on_batch`` every record of ``topics`` up to their ends when reading started.

    Each partition is read from its beginning, or from ``start_offsets[tp]`` when
    given, or, with ``tail``, from its last ``tail`` records (never before the
    given start offset). ``tail`` may map topic names to their own tail; topics
    it leaves out are read whole. Topics that do not exist are listed in
    ``missing_topics`` and read as empty. Raises ``TimeoutError`` when the ends
    are not reached within ``timeout_s``.
    """
    tails: Mapping[str, int] = (
        {} if tail is None else tail if isinstance(tail, Mapping) else dict.fromkeys(topics, tail)
    )
    if any(n < 0 for n in tails.values()):
        raise ValueError(f"tails must be >= 0, got {dict(tails)}")
    wanted = list(dict.fromkeys(topics))
    result = ScanResult()
    present = await existing_topics(config, wanted)
    result.missing_topics = [t for t in wanted if t not in present]
    if not present:
        return result
    what = ", ".join(sorted(present))
    consumer = _reader(config, sorted(present))
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        assignment = await _wait_assignment(consumer, present, deadline, what)
        ends = await consumer.end_offsets(assignment)
        given = start_offsets or {}
        for tp in sorted(assignment):
            start = given.get(tp, 0)
            if tp.topic in tails:
                start = max(start, ends[tp] - tails[tp.topic])
            start = max(0, min(start, ends[tp]))
            result.starts[tp] = start
            consumer.seek(tp, start)
        result.ends = dict(ends)
        following = {tp: result.starts[tp] for tp in assignment}
        while any(following[tp] < ends[tp] for tp in assignment):
            if loop.time() > deadline:
                raise TimeoutError(f"reading {what} did not reach the end in {timeout_s:g} s")
            batches = await consumer.getmany(timeout_ms=100)
            for tp, batch in batches.items():
                end = ends.get(tp, 0)
                kept = [r for r in batch if following.get(tp, end) <= r.offset < end]
                if batch:
                    following[tp] = max(following.get(tp, 0), batch[-1].offset + 1)
                if kept:
                    result.records += len(kept)
                    on_batch(kept)
            for tp in assignment:
                if following[tp] < ends[tp]:
                    # Compaction, retention and transaction markers leave offset gaps.
                    following[tp] = max(following[tp], await consumer.position(tp))
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return result


async def read_topics(
    config: RedpandaSettings,
    topics: Sequence[str],
    *,
    tail: int | Mapping[str, int] | None = None,
    timeout_s: float = 30.0,
) -> list[FetchedRecord]:
    """Every record of ``topics`` (or each partition's last ``tail``) up to their current end.

    Sorted by topic, partition and offset; topics that do not exist read as empty.
    """
    records: list[FetchedRecord] = []
    await scan_topics(config, topics, records.extend, tail=tail, timeout_s=timeout_s)
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


async def read_topic(
    config: RedpandaSettings, topic: str, *, timeout_s: float = 15.0
) -> list[FetchedRecord]:
    """Every record of ``topic`` up to its end when reading started, by partition and offset.

    A topic that does not exist reads as empty, at once. Raises ``TimeoutError``
    when the end is not reached within ``timeout_s``.
    """
    return await read_topics(config, [topic], timeout_s=timeout_s)


async def follow_topic(
    config: RedpandaSettings,
    topic: str,
    *,
    tail: int = 10,
    poll_ms: int = 500,
    timeout_s: float = 30.0,
) -> AsyncGenerator[list[FetchedRecord], None]:
    """Yield the last ``tail`` records of each partition, then new records as they come.

    Runs until the caller stops iterating (or is cancelled). The topic must
    exist: ``LookupError`` otherwise.
    """
    if not await topic_exists(config, topic):
        raise LookupError(f"topic {topic} does not exist")
    consumer = _reader(config, [topic])
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        assignment = await _wait_assignment(consumer, {topic}, loop.time() + timeout_s, topic)
        ends = await consumer.end_offsets(assignment)
        for tp in assignment:
            consumer.seek(tp, max(0, ends[tp] - tail))
        while True:
            batches = await consumer.getmany(timeout_ms=poll_ms)
            records = [r for batch in batches.values() for r in batch]
            if records:
                yield sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
