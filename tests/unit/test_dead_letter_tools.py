"""Dead-letter tools: any header Kafka allows, trusted replay targets, replay marks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import core.streaming.dead_letters as dead_letters
from core.config.settings import Settings
from core.streaming.dead_letters import (
    DeadLetterRecord,
    ReplayRefusedError,
    check_replay,
    read_dead_letters,
    replay_dead_letters,
    replay_target,
    select_dead_letters,
)
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from core.streaming.topic_reader import read_topic


def record(headers: list[tuple[str, bytes | None]], offset: int = 0) -> DeadLetterRecord:
    return DeadLetterRecord("paper.signals.raw.dlq", 0, offset, b"k", b"{}", tuple(headers))


def test_null_and_undecodable_header_values_are_shown_not_fatal() -> None:
    dead = record(
        [
            ("dlq.original.topic", b"paper.signals.raw"),
            ("dlq.exception.type", None),
            ("dlq.exception.message", b"\xff\xfebad"),
            ("trace", None),
        ]
    )
    assert dead.error_type == "?"
    assert dead.error_message == "\ufffd\ufffdbad"
    assert dead.header("trace") is None
    assert dead.decoded_headers()["trace"] == ""
    assert ("trace", "<null>") in dead.shown_headers()
    assert dead.as_dict()["error_type"] == "?"
    assert ("trace", None) in dead.replay_headers()
    assert select_dead_letters([dead], error_type="value") == []
    assert dead.original_location == "paper.signals.raw[None]@None"


def test_the_target_comes_from_the_topic_name_or_the_operator() -> None:
    assert replay_target("paper.signals.raw.dlq", ".dlq") == "paper.signals.raw"
    assert replay_target("auditor.dead", ".dlq", "orders.priced") == "orders.priced"
    with pytest.raises(ReplayRefusedError, match="name the target topic explicitly"):
        replay_target("auditor.dead", ".dlq")
    with pytest.raises(ReplayRefusedError):
        replay_target(".dlq", ".dlq")


def test_a_header_naming_another_topic_is_refused() -> None:
    forged = record([("dlq.original.topic", b"paper.orders")], offset=1)
    twice = record(
        [("dlq.original.topic", b"paper.signals.raw"), ("dlq.original.topic", b"paper.orders")],
        offset=2,
    )
    fine = record([("dlq.original.topic", b"paper.signals.raw")], offset=3)
    with pytest.raises(ReplayRefusedError) as refused:
        check_replay([fine, forged, twice], "paper.signals.raw", explicit=False, force=False)
    text = str(refused.value)
    assert "0:1 says it came from 'paper.orders', not paper.signals.raw" in text
    assert "0:2 says it came from 'paper.signals.raw', 'paper.orders'" in text
    assert "0:3" not in text
    check_replay([fine], "paper.signals.raw", explicit=False, force=False)


def test_a_record_without_origin_needs_an_explicit_target() -> None:
    anonymous = record([("dlq.exception.type", b"ValueError")])
    with pytest.raises(ReplayRefusedError, match=r"has no dlq\.original\.topic header"):
        check_replay([anonymous], "paper.signals.raw", explicit=False, force=False)
    check_replay([anonymous], "paper.signals.raw", explicit=True, force=False)


async def _dead_letters(harness: StreamTestHarness, topic: str, count: int) -> None:
    async def fail(event: dict[str, Any]) -> None:
        raise ValueError(f"cannot handle {event['data']['n']}")

    service = (
        StreamServiceBuilder("dlq-tools", harness.config, harness.settings)
        .add_consumer_handler([topic], "dlq-tools", fail)
        .build()
    )
    async with harness.running(service):
        for n in range(count):
            await harness.publish(topic, {"n": n}, key=f"k-{n}")
        await harness.wait_idle()


async def test_replays_are_marked_and_a_second_replay_is_refused_unless_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    real = dead_letters.MessageProducer

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(dead_letters, "MessageProducer", counting)
    async with StreamTestHarness(Settings()) as harness:
        await _dead_letters(harness, "orders.in", 3)
        records = await read_dead_letters(harness.config, "orders.in.dlq")
        assert [r.replayed for r in records] == [None, None, None]

        results = await replay_dead_letters(harness.config, records, target="orders.in")
        assert made == ["dlq-replay"]  # one producer for the whole run
        assert all(r.marked for r in results)
        replayed = await read_topic(harness.config, "orders.in")
        assert len(replayed) == 6

        again = await read_dead_letters(harness.config, "orders.in.dlq")
        assert all(r.replayed is not None for r in again)
        assert again[0].replayed.target == results[0].target  # type: ignore[union-attr]
        with pytest.raises(ReplayRefusedError, match="already replayed at"):
            await replay_dead_letters(harness.config, again[:1], target="orders.in")
        assert len(await read_topic(harness.config, "orders.in")) == 6  # nothing sent
        await replay_dead_letters(harness.config, again[:1], target="orders.in", force=True)
        assert len(await read_topic(harness.config, "orders.in")) == 7


async def test_reading_a_missing_topic_is_empty_at_once() -> None:
    async with StreamTestHarness(Settings()) as harness:
        started = asyncio.get_running_loop().time()
        assert await read_topic(harness.config, "no.such.topic", timeout_s=5) == []
        assert await read_dead_letters(harness.config, "no.such.topic.dlq") == []
        assert asyncio.get_running_loop().time() - started < 1.0
