"""StreamServiceBuilder: call order, settings switches, per-flow overrides, producer access."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from core.config.settings import Settings
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness


async def _noop(event: dict[str, Any]) -> None:
    return None


def _shape(builder: StreamServiceBuilder) -> dict[str, Any]:
    service = builder.build()
    return {
        "producers": len(service.producers),
        "flows": [
            (
                f.consumer.group_id,
                tuple(f.consumer.topics),
                f.layer.deduplicator is not None,
                f.layer.deduplicator.key_for("x") if f.layer.deduplicator else None,
                f.layer.metrics_collector is not None,
                f.layer.error_handler.dead_letter_topic_for(f.consumer.topics[0]),
            )
            for f in service.flows
        ],
    }


def test_every_call_order_gives_the_same_service() -> None:
    steps = {
        "redis": lambda b: b.with_redis(),
        "producer": lambda b: b.add_producer(),
        "flow": lambda b: b.add_consumer_handler(["in"], "g1", _noop),
        "metrics": lambda b: b.with_metrics(),
    }
    shapes = []
    for order in itertools.permutations(steps):
        builder = StreamServiceBuilder("svc", settings=Settings())
        for step in order:
            steps[step](builder)
        shapes.append(_shape(builder))
    assert all(shape == shapes[0] for shape in shapes)
    assert shapes[0]["flows"][0][2] is True  # dedup even when with_redis came last
    assert shapes[0]["flows"][0][3] == "dedup:{svc:g1:0}:claims"


def test_environment_switches_features_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_SERVICES__svc__dedup_enabled", "false")
    monkeypatch.setenv("TRADESTREAM_SERVICES__svc__metrics_enabled", "false")
    monkeypatch.setenv("TRADESTREAM_SERVICES__svc__retry_max_attempts", "9")
    settings = Settings()

    def build(name: str) -> Any:
        return (
            StreamServiceBuilder(name, settings=settings)
            .with_redis()
            .add_consumer_handler(["in"], "g", _noop)
            .build()
        )

    switched, other = build("svc"), build("other")
    assert switched.flows[0].layer.deduplicator is None
    assert switched.flows[0].layer.metrics_collector is None
    assert switched.flows[0].layer.error_handler.max_attempts == 9
    assert other.flows[0].layer.deduplicator is not None
    assert other.flows[0].layer.metrics_collector is not None


def test_per_flow_overrides_win() -> None:
    service = (
        StreamServiceBuilder("svc", settings=Settings())
        .with_redis()
        .add_consumer_handler(["a"], "ga", _noop)
        .add_consumer_handler(
            ["b"],
            "gb",
            _noop,
            dedup=False,
            retry_attempts=1,
            dead_letter_topic="custom.dead",
            ordering="key",
            concurrency=8,
            commit_policy=CommitPolicy.per_message_sync(),
        )
        .build()
    )
    a, b = service.flows
    assert a.layer.deduplicator is not None and b.layer.deduplicator is None
    assert b.layer.error_handler.max_attempts == 1
    assert b.layer.error_handler.dead_letter_topic_for("b") == "custom.dead"
    assert a.layer.error_handler.dead_letter_topic_for("a") == "a.dlq"
    assert (b.options.ordering, b.options.concurrency) == ("key", 8)
    assert b.consumer.commit_policy.per_message and not a.consumer.commit_policy.per_message


def test_producer_missing_is_a_clear_error() -> None:
    service = StreamServiceBuilder("svc", settings=Settings()).build()
    with pytest.raises(RuntimeError, match="has no producer"):
        _ = service.producer


async def test_handler_reaches_the_producer_it_asked_for() -> None:
    async with StreamTestHarness() as harness:
        holder: dict[str, Any] = {}

        async def handle(event: dict[str, Any]) -> None:
            await holder["svc"].producer.send("out", None, {"echo": event["data"]["n"]}, "echo")

        service = (
            StreamServiceBuilder("echo", harness.config, harness.settings)
            .add_consumer_handler(["in"], "echo.g", handle)
            .add_producer(topics=["out"])
            .build()
        )
        holder["svc"] = service
        async with harness.running(service):
            await harness.publish("in", {"n": 7})
            await harness.wait_idle()
        assert [e["data"] for e in harness.produced("out")] == [{"echo": 7}]


def test_environment_vetoes_dedup_even_where_code_asks_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADESTREAM_SERVICES__svc__dedup_enabled", "false")
    service = (
        StreamServiceBuilder("svc", settings=Settings())
        .with_redis()
        .add_consumer_handler(["in"], "g", _noop, dedup=True)
        .build()
    )
    assert service.flows[0].layer.deduplicator is None
    assert service.connections is not None and not service.connections.use_redis


async def test_per_message_commit_policy_commits_each_message_in_a_flow() -> None:
    async with StreamTestHarness() as harness:
        service = (
            StreamServiceBuilder("committer", harness.config, harness.settings)
            .add_consumer_handler(
                ["in"], "committer.g", _noop, commit_policy=CommitPolicy.per_message_sync()
            )
            .build()
        )
        async with harness.running(service):
            for n in range(5):
                await harness.publish("in", {"n": n}, key="same-partition")
                await harness.wait_idle()
            assert service.consumers[0].commits == 5
