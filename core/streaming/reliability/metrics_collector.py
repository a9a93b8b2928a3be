"""Prometheus metrics of one streaming service, in a registry of its own.

Each :class:`MetricsCollector` owns a ``CollectorRegistry`` (never the global
one), so several services, or several tests, live in one process without name
clashes. Labels are bounded by design: service, topic, consumer group, exception
class name, and partition for the lag gauge; never event ids or free text.

The ``record_*`` methods are synchronous and cheap (a dict lookup and an
increment on a cached labelled child), for the per-message hot path. The plan's
``record_success``/``record_failure`` coroutines are kept for code written
against it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "tradestream_"
DEFAULT_GROUP = "default"
UNKNOWN_TOPIC = "unknown"
STRING_ERROR_TYPE = "error"
MAX_LABEL_LENGTH = 100

#: Bucket bounds of ``handler_duration_seconds``: sub-millisecond handlers up to slow ones.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_Child = TypeVar("_Child")


def error_type_of(error: str | BaseException) -> str:
    """The ``error_type`` label: the exception's class name, or ``"error"`` for text."""
    if isinstance(error, BaseException):
        return type(error).__name__[:MAX_LABEL_LENGTH]
    return STRING_ERROR_TYPE


class MetricsCollector:
    """Counters, gauges and a duration histogram of one service's consumer flows.

    ``consumer_group`` given here is the default of every ``consumer_group``
    argument below; when neither is given the label is ``"default"``.
    """

    def __init__(
        self,
        service_name: str,
        registry: CollectorRegistry | None = None,
        consumer_group: str | None = None,
    ) -> None:
        self.service_name = service_name
        self.consumer_group = consumer_group or DEFAULT_GROUP
        self._registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._children: dict[Hashable, Any] = {}

        flow = ("service", "topic", "consumer_group")
        group = ("service", "consumer_group")
        reg = self._registry
        self._consumed = Counter(
            PREFIX + "messages_consumed_total",
            "Messages fetched and handed to processing (redeliveries count again).",
            flow,
            registry=reg,
        )
        self._handled = Counter(
            PREFIX + "messages_handled_total",
            "Messages the handler finished successfully.",
            flow,
            registry=reg,
        )
        self._duplicates = Counter(
            PREFIX + "duplicates_skipped_total",
            "Messages skipped as already handled.",
            flow,
            registry=reg,
        )
        self._retries = Counter(
            PREFIX + "retries_total",
            "Handler retries after a retryable failure.",
            (*flow, "error_type"),
            registry=reg,
        )
        self._dead_lettered = Counter(
            PREFIX + "dead_lettered_total",
            "Messages written to a dead-letter topic.",
            (*flow, "error_type"),
            registry=reg,
        )
        self._decode_failures = Counter(
            PREFIX + "decode_failures_total",
            "Messages whose bytes could not be decoded.",
            flow,
            registry=reg,
        )
        self._failures = Counter(
            PREFIX + "failures_total",
            "Handler failures, before any retry.",
            (*flow, "error_type"),
            registry=reg,
        )
        self._commits = Counter(
            PREFIX + "commits_total",
            "Offset commits made.",
            group,
            registry=reg,
        )
        self._dedup_unavailable = Counter(
            PREFIX + "dedup_unavailable_total",
            "Dedup operations (per event id) that could not reach the dedup store.",
            group,
            registry=reg,
        )
        self._loop_restarts = Counter(
            PREFIX + "loop_restarts_total",
            "Consumption loops restarted after a crash.",
            group,
            registry=reg,
        )
        self._in_flight = Gauge(
            PREFIX + "in_flight_messages",
            "Messages fetched and not yet finished.",
            group,
            registry=reg,
        )
        self._lag = Gauge(
            PREFIX + "consumer_lag",
            "High watermark minus the fetch position, per partition.",
            ("service", "topic", "partition", "consumer_group"),
            registry=reg,
        )
        self._duration = Histogram(
            PREFIX + "handler_duration_seconds",
            "Time the handler took for one message.",
            flow,
            buckets=DURATION_BUCKETS,
            registry=reg,
        )

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding this service's metrics (for an HTTP exposition handler)."""
        return self._registry

    # ------------------------------------------------------------------ children

    def _child(self, key: Hashable, make: Callable[[], _Child]) -> _Child:
        child: _Child | None = self._children.get(key)
        if child is None:
            child = self._children[key] = make()
        return child

    def _group(self, consumer_group: str | None) -> str:
        return consumer_group or self.consumer_group

    def _flow_child(self, metric: Counter, topic: str | None, group: str | None) -> Counter:
        g = self._group(group)
        t = topic or UNKNOWN_TOPIC
        return self._child((id(metric), t, g), lambda: metric.labels(self.service_name, t, g))

    def _error_child(
        self, metric: Counter, topic: str | None, error_type: str, group: str | None
    ) -> Counter:
        g = self._group(group)
        t = topic or UNKNOWN_TOPIC
        e = error_type[:MAX_LABEL_LENGTH] or STRING_ERROR_TYPE
        return self._child((id(metric), t, g, e), lambda: metric.labels(self.service_name, t, g, e))

    def _group_child(self, metric: Counter | Gauge, group: str | None) -> Any:
        g = self._group(group)
        return self._child((id(metric), g), lambda: metric.labels(self.service_name, g))

    # ------------------------------------------------------------------ hot path

    def record_consumed(self, topic: str, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` messages fetched from ``topic``."""
        self._flow_child(self._consumed, topic, consumer_group).inc(n)

    def record_handled(
        self, topic: str | None, duration: float, consumer_group: str | None = None
    ) -> None:
        """Count one message handled successfully and observe its duration in seconds."""
        g = self._group(consumer_group)
        t = topic or UNKNOWN_TOPIC
        key = (id(self._duration), t, g)
        hist: Histogram = self._child(key, lambda: self._duration.labels(self.service_name, t, g))
        hist.observe(duration)
        self._flow_child(self._handled, t, g).inc()

    def handled_recorder(
        self, topic: str | None, consumer_group: str | None = None
    ) -> Callable[[float], None]:
        """``record_handled`` for one topic and group, with the label lookups done once."""
        g = self._group(consumer_group)
        t = topic or UNKNOWN_TOPIC
        hist: Histogram = self._child(
            (id(self._duration), t, g), lambda: self._duration.labels(self.service_name, t, g)
        )
        observe = hist.observe
        inc = self._flow_child(self._handled, t, g).inc

        def record(duration: float) -> None:
            observe(duration)
            inc()

        return record

    def record_duplicate(self, topic: str, consumer_group: str | None = None) -> None:
        """Count one message skipped as a duplicate."""
        self._flow_child(self._duplicates, topic, consumer_group).inc()

    def record_retry(self, topic: str, error_type: str, consumer_group: str | None = None) -> None:
        """Count one retry of a handler after a failure of class ``error_type``."""
        self._error_child(self._retries, topic, error_type, consumer_group).inc()

    def record_dead_letter(
        self, topic: str, error_type: str, consumer_group: str | None = None
    ) -> None:
        """Count one message from ``topic`` written to its dead-letter topic."""
        self._error_child(self._dead_lettered, topic, error_type, consumer_group).inc()

    def record_decode_failure(self, topic: str, consumer_group: str | None = None) -> None:
        """Count one message from ``topic`` whose bytes could not be decoded."""
        self._flow_child(self._decode_failures, topic, consumer_group).inc()

    def record_error(
        self, topic: str | None, error_type: str, consumer_group: str | None = None
    ) -> None:
        """Count one handler failure of class ``error_type`` (synchronous form)."""
        self._error_child(self._failures, topic, error_type, consumer_group).inc()

    def record_commit(self, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` offset commits."""
        self._group_child(self._commits, consumer_group).inc(n)

    def record_dedup_unavailable(self, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` event ids whose dedup operation could not reach the store."""
        self._group_child(self._dedup_unavailable, consumer_group).inc(n)

    def record_loop_restart(self, consumer_group: str | None = None) -> None:
        """Count one restart of a crashed consumption loop."""
        self._group_child(self._loop_restarts, consumer_group).inc()

    def set_in_flight(self, n: int, consumer_group: str | None = None) -> None:
        """Set the number of messages fetched and not yet finished."""
        self._group_child(self._in_flight, consumer_group).set(n)

    def set_lag(
        self, topic: str, partition: int, lag: int, consumer_group: str | None = None
    ) -> None:
        """Set the lag of one partition (high watermark minus the fetch position)."""
        g = self._group(consumer_group)
        key = (id(self._lag), topic, partition, g)
        gauge: Gauge = self._child(
            key, lambda: self._lag.labels(self.service_name, topic, str(partition), g)
        )
        gauge.set(lag)

    def clear_lag(self, topic: str, partition: int, consumer_group: str | None = None) -> None:
        """Forget the lag of a partition this flow no longer owns."""
        g = self._group(consumer_group)
        if self._children.pop((id(self._lag), topic, partition, g), None) is not None:
            self._lag.remove(self.service_name, topic, str(partition), g)

    # ------------------------------------------------------------------ plan API

    async def record_success(self, duration: float, topic: str | None = None) -> None:
        """Count one success taking ``duration`` seconds (the plan's API)."""
        self.record_handled(topic, duration)

    async def record_failure(self, error: str | BaseException, topic: str | None = None) -> None:
        """Count one failure; the label is the exception class name or ``"error"``."""
        self.record_error(topic, error_type_of(error))

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, float]:
        """Plain totals summed over labels, for in-process views and tests."""
        sources: dict[str, tuple[str, str]] = {
            "consumed": ("messages_consumed", "_total"),
            "handled": ("messages_handled", "_total"),
            "duplicates": ("duplicates_skipped", "_total"),
            "retries": ("retries", "_total"),
            "dead_lettered": ("dead_lettered", "_total"),
            "decode_failures": ("decode_failures", "_total"),
            "failures": ("failures", "_total"),
            "commits": ("commits", "_total"),
            "dedup_unavailable": ("dedup_unavailable", "_total"),
            "loop_restarts": ("loop_restarts", "_total"),
            "in_flight": ("in_flight_messages", ""),
            "lag": ("consumer_lag", ""),
        }
        wanted = {PREFIX + name + suffix: key for key, (name, suffix) in sources.items()}
        totals = dict.fromkeys(sources, 0.0)
        for family in self._registry.collect():
            for sample in family.samples:
                key = wanted.get(sample.name)
                if key is not None:
                    totals[key] += sample.value
        return totals

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self._registry)
