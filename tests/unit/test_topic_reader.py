"""Reading topics to their end: tails, start offsets, several topics, missing ones, following."""

from __future__ import annotations

import asyncio

from core.config.settings import Settings
from core.streaming.testing import StreamTestHarness
from core.streaming.topic_reader import (
    follow_topic,
    read_topics,
    scan_topics,
    topic_exists,
)
from core.streaming.types import FetchedRecord, TopicPartition


async def _fill(harness: StreamTestHarness, topic: str, per_key: int, keys: int = 3) -> None:
    for n in range(per_key):
        for k in range(keys):
            await harness.publish(topic, {"n": n, "k": k}, key=f"key-{k}")


async def test_tails_start_offsets_and_several_topics_in_one_pass() -> None:
    async with StreamTestHarness(Settings()) as harness:
        await _fill(harness, "a", 10)
        await _fill(harness, "b", 4)
        seen: list[FetchedRecord] = []
        scan = await scan_topics(harness.config, ["a", "b", "missing"], seen.extend, tail={"a": 2})
        assert scan.missing_topics == ["missing"]
        a = [r for r in seen if r.topic == "a"]
        b = [r for r in seen if r.topic == "b"]
        assert len(b) == 12  # read whole
        ends = {tp: end for tp, end in scan.ends.items() if tp.topic == "a"}
        assert sum(ends.values()) == 30
        assert len(a) == sum(min(2, end) for end in ends.values())
        assert all(r.offset >= ends[TopicPartition("a", r.partition)] - 2 for r in a)

        starts = {tp: max(0, end - 1) for tp, end in ends.items()}
        later: list[FetchedRecord] = []
        await scan_topics(harness.config, ["a"], later.extend, start_offsets=starts)
        assert len(later) == sum(1 for end in ends.values() if end)


async def test_a_read_stops_at_the_end_it_found_when_it_started() -> None:
    async with StreamTestHarness(Settings()) as harness:
        await _fill(harness, "grow", 5)
        seen: list[FetchedRecord] = []
        late: list[asyncio.Task[str]] = []

        def keep_and_add(batch: list[FetchedRecord]) -> None:
            seen.extend(batch)
            late.append(asyncio.get_running_loop().create_task(harness.publish("grow", {})))

        await scan_topics(harness.config, ["grow"], keep_and_add)  # type: ignore[arg-type]
        await asyncio.gather(*late)
        assert len(seen) == 15
        assert late and len(await read_topics(harness.config, ["grow"])) == 15 + len(late)


async def test_follow_yields_the_tail_then_what_arrives() -> None:
    async with StreamTestHarness(Settings()) as harness:
        await _fill(harness, "live", 3, keys=1)
        assert await topic_exists(harness.config, "live")
        assert not await topic_exists(harness.config, "dead")
        stream = follow_topic(harness.config, "live", tail=2, poll_ms=50)
        first = await anext(stream)
        assert [r.offset for r in first] == [1, 2]
        await harness.publish("live", {"n": 99}, key="key-0")
        second = await anext(stream)
        assert [r.offset for r in second] == [3]
        await stream.aclose()
