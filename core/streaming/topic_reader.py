"""Read a topic from the beginning to its current end without committing anything.

Used by tools and tests (dead-letter inspection, the test harness) on any
backend behind the client surface.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import uuid4

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerClient, ConsumerOptions, create_consumer
from core.streaming.types import FetchedRecord, TopicPartition


async def _caught_up(consumer: ConsumerClient, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def read_topic(
    config: RedpandaSettings,
    topic: str,
    *,
    timeout_s: float = 15.0,
    isolation_level: str = "read_committed",
) -> list[FetchedRecord]:
    """Every record of ``topic`` up to its end when reading started, by partition and offset.

    Uses a throwaway consumer group and never commits. By default only committed
    records are read (records of open or aborted transactions are not);
    ``isolation_level="read_uncommitted"`` reads them too. Raises ``TimeoutError``
    when the end is not reached within ``timeout_s``.
    """
    consumer = create_consumer(
        config,
        [topic],
        f"tradestream-reader-{uuid4().hex[:10]}",
        ConsumerOptions("earliest", isolation_level=isolation_level),
    )
    await consumer.start()
    records: list[FetchedRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ends: dict[TopicPartition, int] | None = None
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            for batch in batches.values():
                records.extend(batch)
            assignment = consumer.assignment()
            if ends is None and assignment:
                ends = await consumer.end_offsets(assignment)
            if ends is not None and await _caught_up(consumer, ends):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout_s:g} s")
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))
