"""Read topics up to their current end, or follow them, without committing anything.

Used by tools and tests (dead-letter inspection, the test harness, services that
rebuild their state from their own topics at start) on any backend behind the
client surface. Every reader first asks the broker which topics exist: a topic
that does not exist reads as empty at once instead of waiting for a timeout.
Readers use a throwaway consumer group and never commit, and read committed
records only (``read_committed``: nothing of open or aborted transactions) unless
told ``isolation_level="read_uncommitted"``.
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


def _reader(
    config: RedpandaSettings, topics: Sequence[str], isolation_level: str = "read_committed"
) -> ConsumerClient:
    return create_consumer(
        config,
        list(topics),
        f"tradestream-reader-{uuid4().hex[:10]}",
        ConsumerOptions("earliest", isolation_level=isolation_level),
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
    isolation_level: str = "read_committed",
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
    consumer = _reader(config, sorted(present), isolation_level)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        assignment = await _wait_assignment(consumer, present, deadline, what)
        ends = await consumer.end_offsets(assignment)
        given = start_offsets or {}
        floors = {tp: max(0, min(given.get(tp, 0), ends[tp])) for tp in assignment}
        for tp in sorted(assignment):
            start = floors[tp]
            if tp.topic in tails:
                start = max(start, ends[tp] - tails[tp.topic])
            result.starts[tp] = start
        result.ends = dict(ends)
        streamed = {tp: (result.starts[tp], ends[tp]) for tp in assignment if tp.topic not in tails}
        tailed = {tp: (result.starts[tp], ends[tp]) for tp in assignment if tp.topic in tails}

        def stream(tp: TopicPartition, records: list[FetchedRecord]) -> None:
            result.records += len(records)
            on_batch(records)

        kept: dict[TopicPartition, list[FetchedRecord]] = {tp: [] for tp in tailed}
        await _read_ranges(
            consumer,
            {**streamed, **tailed},
            deadline,
            what,
            timeout_s,
            (lambda tp, records: kept[tp].extend(records) if tp in kept else stream(tp, records)),
        )
        # Transaction markers and aborted records take offsets too: widen a tail's window
        # until it holds its records (or reaches the start).
        while short := {
            tp: window
            for tp, window in tailed.items()
            if len(kept[tp]) < tails[tp.topic] and window[0] > floors[tp]
        }:
            earlier: dict[TopicPartition, tuple[int, int]] = {}
            for tp, (start, end) in short.items():
                wider = max(floors[tp], end - 2 * (end - start) - 1)
                earlier[tp] = (wider, start)
                tailed[tp] = (wider, end)
            found: dict[TopicPartition, list[FetchedRecord]] = {tp: [] for tp in earlier}

            def collect(
                tp: TopicPartition,
                records: list[FetchedRecord],
                into: dict[TopicPartition, list[FetchedRecord]] = found,
            ) -> None:
                into[tp].extend(records)

            await _read_ranges(consumer, earlier, deadline, what, timeout_s, collect)
            for tp, records in found.items():
                kept[tp] = records + kept[tp]
        for tp in sorted(tailed):
            last = kept[tp][len(kept[tp]) - tails[tp.topic] :] if tails[tp.topic] else []
            result.starts[tp] = last[0].offset if last else tailed[tp][1]
            if last:
                stream(tp, last)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return result


async def _read_ranges(
    consumer: ConsumerClient,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    deadline: float,
    what: str,
    timeout_s: float,
    sink: Callable[[TopicPartition, list[FetchedRecord]], None],
) -> None:
    """Hand ``sink`` each partition's records in ``[start, end)``, in offset order."""
    loop = asyncio.get_running_loop()
    following = {}
    for tp, (start, _) in ranges.items():
        consumer.seek(tp, start)
        following[tp] = start
    while any(following[tp] < ranges[tp][1] for tp in ranges):
        if loop.time() > deadline:
            raise TimeoutError(f"reading {what} did not reach the end in {timeout_s:g} s")
        batches = await consumer.getmany(timeout_ms=100)
        for tp, batch in batches.items():
            if tp not in ranges or not batch:
                continue
            end = ranges[tp][1]
            records = [r for r in batch if following[tp] <= r.offset < end]
            following[tp] = max(following[tp], batch[-1].offset + 1)
            if records:
                sink(tp, records)
        for tp in ranges:
            if following[tp] < ranges[tp][1]:
                # Compaction, retention and transaction markers leave offset gaps.
                following[tp] = max(following[tp], await consumer.position(tp))


async def read_topics(
    config: RedpandaSettings,
    topics: Sequence[str],
    *,
    tail: int | Mapping[str, int] | None = None,
    timeout_s: float = 30.0,
    isolation_level: str = "read_committed",
) -> list[FetchedRecord]:
    """Every record of ``topics`` (or each partition's last ``tail``) up to their current end.

    Sorted by topic, partition and offset; topics that do not exist read as empty.
    """
    records: list[FetchedRecord] = []
    await scan_topics(
        config,
        topics,
        records.extend,
        tail=tail,
        timeout_s=timeout_s,
        isolation_level=isolation_level,
    )
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


async def read_topic(
    config: RedpandaSettings,
    topic: str,
    *,
    timeout_s: float = 15.0,
    isolation_level: str = "read_committed",
) -> list[FetchedRecord]:
    """Every record of ``topic`` up to its end when reading started, by partition and offset.

    A topic that does not exist reads as empty, at once. Raises ``TimeoutError``
    when the end is not reached within ``timeout_s``.
    """
    return await read_topics(config, [topic], timeout_s=timeout_s, isolation_level=isolation_level)


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
