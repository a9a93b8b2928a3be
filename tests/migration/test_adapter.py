"""``StreamProcessor``, the adapter: its override points, its warning, and the new path under it.

Each test below is one promise of the old base class kept, or one of the plan's
defects (DESIGN §6) shown absent, on the embedded broker.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from core.config.settings import Settings, load_settings
from core.streaming.errors import RetryableError
from core.streaming.legacy import StreamProcessor, handler_method_name
from core.streaming.testing import StreamTestHarness
from core.streaming.types import TopicPartition
from tests.migration.scenario import metric

pytestmark = pytest.mark.filterwarnings("ignore:StreamProcessor is deprecated:DeprecationWarning")


class Recorder(StreamProcessor):
    """Records ``(topic, event id)`` of each message and forwards its data to ``out``."""

    def __init__(self, settings: Settings, *, group_id: str = "recorder", **kwargs: Any) -> None:
        super().__init__(
            service_name="recorder",
            topics=["orders", "refunds"],
            group_id=group_id,
            settings=settings,
            **kwargs,
        )
        self.seen: list[tuple[str, str]] = []

    async def process_message(self, topic: str, message: dict[str, Any]) -> None:
        self.seen.append((topic, message["id"]))
        await self.producer.send("out", message["data"].get("key"), message["data"], "copied")


def test_each_instance_warns_naming_the_builder_calls_that_replace_it() -> None:
    with pytest.warns(DeprecationWarning) as caught:
        Recorder(Settings(), group_id="billing")
    [warning] = caught.list
    text = str(warning.message)
    assert "StreamServiceBuilder('recorder', config, settings)" in text
    assert ".add_consumer_handler(['orders', 'refunds'], 'billing', handler)" in text
    assert ".with_redis(redis_client).add_producer()" in text
    assert "docs/migration.md" in text
    assert Path(warning.filename).name == Path(__file__).name, "points at the subclass"


async def test_process_message_gets_each_messages_topic_and_envelope() -> None:
    async with StreamTestHarness() as harness:
        recorder = Recorder(harness.settings)
        async with harness.running(recorder):
            first = await harness.publish("orders", {"key": "a"}, key="a")
            second = await harness.publish("refunds", {"key": "b"}, key="b")
            third = await harness.publish("orders", {"key": "c"}, key="c")
            await harness.wait_idle()
    assert sorted(recorder.seen) == sorted(
        [("orders", first), ("refunds", second), ("orders", third)]
    )


async def test_the_inherited_producer_wraps_every_payload_and_stamps_correlation() -> None:
    async with StreamTestHarness() as harness:
        recorder = Recorder(harness.settings)
        async with harness.running(recorder):
            source = await harness.publish(
                "orders", {"id": "business-id", "key": None}, correlation_id="chain-1"
            )
            await harness.wait_idle()
        [out] = harness.produced("out")
        [record] = harness.records("out")
    assert out["data"] == {"id": "business-id", "key": None}, "a payload with `id` is wrapped"
    assert out["id"] != "business-id" and out["source"] == "recorder"
    assert (out["correlation_id"], out["causation_id"]) == ("chain-1", source)
    assert record.key is None, "a None key stays None"


class PerTopic(StreamProcessor):
    """Handles one topic by a ``handle_<topic>`` method and another by the mapping."""

    def __init__(self, settings: Settings) -> None:
        self.calls: list[tuple[str, str]] = []
        super().__init__(
            service_name="per-topic",
            topics=["market.ticks", "orders-created"],
            group_id="per-topic",
            settings=settings,
            handlers={"orders-created": self.on_order},
        )

    async def handle_market_ticks(self, message: dict[str, Any]) -> None:
        self.calls.append(("tick", message["data"]["n"]))

    async def on_order(self, message: dict[str, Any]) -> None:
        self.calls.append(("order", message["data"]["n"]))


async def test_per_topic_handlers_by_method_name_or_mapping() -> None:
    assert handler_method_name("market.ticks") == "handle_market_ticks"
    assert handler_method_name("orders-created") == "handle_orders_created"
    async with StreamTestHarness() as harness:
        service = PerTopic(harness.settings)
        async with harness.running(service):
            await harness.publish("market.ticks", {"n": "t1"}, key="x")
            await harness.publish("orders-created", {"n": "o1"}, key="x")
            await harness.wait_idle()
    assert sorted(service.calls) == [("order", "o1"), ("tick", "t1")]


def test_a_topic_nobody_handles_is_refused_when_the_service_is_made() -> None:
    class Partial(StreamProcessor):
        async def handle_orders(self, message: dict[str, Any]) -> None:
            return None

    with pytest.raises(TypeError, match=r"'refunds' \(handle_refunds\)"):
        Partial("partial", ["orders", "refunds"], "partial", settings=Settings())
    with pytest.raises(ValueError, match="topics not consumed: payments"):
        Partial("partial", ["orders"], "partial", handlers={"payments": Partial.handle_orders})


async def test_start_and_stop_are_idempotent_and_stop_before_start_is_safe() -> None:
    async with StreamTestHarness() as harness:
        recorder = Recorder(harness.settings)
        await recorder.stop()
        await recorder.start()
        await recorder.start()
        assert (await recorder.health())["live"]
        await recorder.stop()
        await recorder.stop()
        assert not (await recorder.health())["live"]


async def test_failures_are_retried_then_dead_lettered_never_committed_silently() -> None:
    attempts: dict[str, int] = {}

    class Flaky(StreamProcessor):
        async def handle_orders(self, message: dict[str, Any]) -> None:
            n = message["data"]["n"]
            attempts[n] = attempts.get(n, 0) + 1
            if n == "transient" and attempts[n] == 1:
                raise RetryableError("price feed timed out")
            if n == "broken":
                raise RuntimeError("a bug")
            if n == "cancelled":
                raise asyncio.CancelledError  # the handler's own, not a shutdown

    async with StreamTestHarness() as harness:
        settings = harness.settings.model_copy(
            update={
                "reliability": harness.settings.reliability.model_copy(
                    update={"retry_backoff_initial_ms": 1, "retry_backoff_max_ms": 5}
                )
            }
        )
        flaky = Flaky("flaky", ["orders"], "flaky", settings=settings)
        async with harness.running(flaky):
            for n in ("transient", "broken", "cancelled", "fine"):
                await harness.publish("orders", {"n": n}, key="same-partition")
            await harness.wait_idle()
        dead = harness.dead_letters("orders")
    orchestrator = flaky.orchestrator
    assert attempts == {"transient": 2, "broken": 3, "cancelled": 3, "fine": 1}
    assert sorted(d.header("dlq.exception.type") or "" for d in dead) == [
        "RuntimeError",
        "core.streaming.reliability.steps.HandlerCancelledError",
    ]
    assert {d.header("dlq.attempts") for d in dead} == {"3"}
    assert metric(orchestrator, "tradestream_dead_lettered_total") == 2
    assert metric(orchestrator, "tradestream_messages_handled_total") == 2


async def test_commits_are_batched_and_a_restart_redelivers_nothing_finished() -> None:
    async with StreamTestHarness() as harness:
        first = Recorder(harness.settings)
        async with harness.running(first):
            for n in range(200):
                await harness.publish("orders", {"key": str(n % 7)}, key=str(n % 7))
            await harness.wait_idle()
        assert len(first.seen) == 200
        commits = metric(first.orchestrator, "tradestream_commits_total")
        assert 1 <= commits <= 10, f"{commits} commits for 200 messages"
        committed = sum(
            harness.broker.committed("recorder", TopicPartition("orders", p)) or 0 for p in range(3)
        )
        assert committed == 200

        again = Recorder(harness.settings)
        async with harness.running(again):
            last = await harness.publish("orders", {"key": "z"}, key="z")
            await harness.wait_idle()
        assert again.seen == [("orders", last)], "only the new message"


async def test_two_groups_of_one_service_do_not_suppress_each_others_events() -> None:
    async with StreamTestHarness() as harness:
        audit = Recorder(harness.settings, group_id="recorder.audit")
        billing = Recorder(harness.settings, group_id="recorder.billing")
        async with harness.running(audit), harness.running(billing):
            event = await harness.publish("orders", {"key": "k"}, key="k")
            await harness.wait_idle()
    assert audit.seen == billing.seen == [("orders", event)]


async def test_stop_lets_a_running_handler_finish_and_commits_it() -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    class Slow(StreamProcessor):
        async def handle_orders(self, message: dict[str, Any]) -> None:
            entered.set()
            await release.wait()
            finished.append(message["id"])

    async with StreamTestHarness() as harness:
        slow = Slow("slow", ["orders"], "slow", settings=harness.settings)
        await slow.start()
        event = await harness.publish("orders", {}, key="k")
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(slow.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done(), "stop waits for the running handler"
        release.set()
        await asyncio.wait_for(stopping, 10)
        assert finished == [event], "the handler was not cancelled"
        partition = next(p for p in range(3) if harness.broker.records("orders", p))
        assert harness.broker.committed("slow", TopicPartition("orders", partition)) == 1


async def test_the_service_switches_reach_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TRADESTREAM_SERVICES__<name>__*`` tune the adapter like any builder-made service."""
    for name in [n for n in os.environ if n.upper().startswith("TRADESTREAM_")]:
        monkeypatch.delenv(name)
    async with StreamTestHarness() as harness:
        monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", harness.broker_url)
        monkeypatch.setenv("TRADESTREAM_REDIS__URL", harness.broker_url)
        monkeypatch.setenv("TRADESTREAM_SERVICES__recorder__dedup_enabled", "false")
        monkeypatch.setenv("TRADESTREAM_SERVICES__recorder__metrics_enabled", "false")
        monkeypatch.setenv("TRADESTREAM_SERVICES__recorder__ordering", "key")
        monkeypatch.setenv("TRADESTREAM_SERVICES__recorder__default_concurrency", "4")
        recorder = Recorder(load_settings())
        assert recorder.orchestrator.registries() == [], "metrics off"
        assert [f.options.concurrency for f in recorder.orchestrator.flows] == [4]
        async with harness.running(recorder):
            event = await harness.publish("orders", {"key": "k"}, key="k")
            [record] = harness.records("orders")
            await harness.publish_raw("orders", record.value, key=b"k")  # the same event again
            await harness.wait_idle()
    assert recorder.seen == [("orders", event)] * 2, "dedup off: the repeat is handled"
