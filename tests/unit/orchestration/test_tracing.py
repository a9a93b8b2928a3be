"""With an OpenTelemetry SDK configured, each handled message is a span linked to its producer."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.testing import StreamTestHarness
from core.streaming.tracing import tracing_active


async def test_handled_messages_are_spans_linked_to_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert tracing_active()
    async with StreamTestHarness() as harness:
        holder: dict[str, Any] = {}

        async def first(event: dict[str, Any]) -> None:
            await holder["svc"].producer.send("second", None, {"n": 1}, "hop")

        async def second(event: dict[str, Any]) -> None:
            return None

        service = (
            StreamServiceBuilder("traced", harness.config, harness.settings)
            .add_producer(topics=["second"])
            .add_consumer_handler(["first"], "traced.a", first)
            .add_consumer_handler(["second"], "traced.b", second)
            .build()
        )
        holder["svc"] = service
        async with harness.running(service):
            await harness.publish("first", {"n": 0})
            await harness.wait_idle()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"first process", "second process"}
    hop = spans["second process"]
    assert [link.context.span_id for link in hop.links] == [spans["first process"].context.span_id]
    assert hop.kind is trace.SpanKind.CONSUMER
    assert hop.attributes is not None and hop.attributes["messaging.destination.name"] == "second"


def test_without_an_sdk_tracing_is_off() -> None:
    assert not tracing_active()
