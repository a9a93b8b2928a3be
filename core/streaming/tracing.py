"""Optional OpenTelemetry spans for handled messages (the ``tracing`` extra).

When the OpenTelemetry API is installed and an SDK tracer provider is set, each
handled message runs in a consumer span that is *linked* to the producer's span
(from the record's W3C ``traceparent`` header), and events produced inside the
handler carry the handling span's ``traceparent``. Without an SDK this module
does nothing and costs nothing but a flag check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.streaming.infrastructure.consumed_message import ConsumedMessage

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - the extra is not installed
    _trace = None  # type: ignore[assignment]
    _PROPAGATOR = None


def tracing_active() -> bool:
    """True when an OpenTelemetry SDK tracer provider is configured."""
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return type(provider).__module__.startswith("opentelemetry.sdk")


@contextmanager
def _span(
    service: str, topic: str, partition: int, offset: int, traceparent: str | None
) -> Iterator[None]:
    assert _trace is not None
    links = []
    if traceparent:
        parent_ctx = _PROPAGATOR.extract({"traceparent": traceparent})
        parent_span = _trace.get_current_span(parent_ctx).get_span_context()
        if parent_span.is_valid:
            links.append(_trace.Link(parent_span))
    tracer = _trace.get_tracer("tradestream")
    with tracer.start_as_current_span(
        f"{topic} process",
        kind=_trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.kafka.destination.partition": partition,
            "messaging.kafka.message.offset": offset,
            "service.name": service,
        },
    ):
        yield


def handling_span(
    service: str, topic: str, partition: int, offset: int, traceparent: str | None
) -> Any:
    """A span around handling one message, or a no-op context without an SDK."""
    if not tracing_active():
        return nullcontext()
    return _span(service, topic, partition, offset, traceparent)


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span, if tracing is active."""
    if not tracing_active():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


class TracingStep:
    """Runs each handler call of a flow inside a consumer span (``message_scope``)."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name

    def message_scope(self, message: ConsumedMessage) -> Any:
        """The span of handling ``message``, linked to its producer's span."""
        header = message.header("traceparent")
        traceparent = header.decode("ascii", "replace") if header else None
        return handling_span(
            self.service_name, message.topic, message.partition, message.offset, traceparent
        )
