"""Prometheus metrics of one streaming service, in a registry of its own, as a sensor.

Each :class:`MetricsCollector` owns a ``CollectorRegistry`` (never the global
one), so several services, or several tests, live in one process without name
clashes. Labels are bounded by design: service, topic, consumer group, exception
class name, and partition for the lag gauges; never event ids or free text.

Flows observe through :meth:`MetricsCollector.for_flow`, a :class:`Sensor` whose
labelled children are resolved once per topic, so a run of messages costs a few
increments. Handler durations go to a histogram kept as plain bucket counters
and exposed on scrape, which costs a bisect per message instead of a lock. The
``record_*`` methods and the plan's ``record_success``/``record_failure``
coroutines are kept for code written against them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.reliability.sensors import RunSummary, Sensor
from core.streaming.types import TopicPartition

PREFIX = "tradestream_"
DEFAULT_GROUP = "default"
UNKNOWN_TOPIC = "unknown"
STRING_ERROR_TYPE = "error"
MAX_LABEL_LENGTH = 100

#: Bucket bounds of ``handler_duration_seconds``: sub-millisecond handlers up to slow ones.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def error_type_of(error: str | BaseException) -> str:
    """The ``error_type`` label: the exception's class name, or ``"error"`` for text."""
    if isinstance(error, BaseException):
        return type(error).__name__[:MAX_LABEL_LENGTH]
    return STRING_ERROR_TYPE


class _Durations:
    """A histogram as plain counters: one bucket count per bound, sum and count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def observe_many(self, seconds: list[float]) -> None:
        """:meth:`observe` for each of ``seconds``: sorted once, then one search per bound."""
        ordered = sorted(seconds)
        buckets = self.buckets
        below = 0
        for index, bound in enumerate(DURATION_BUCKETS):
            upto = bisect_right(ordered, bound, below)
            buckets[index] += upto - below
            below = upto
            if below == len(ordered):
                break
        buckets[-1] += len(ordered) - below
        self.total += sum(seconds)
        self.count += len(seconds)


class _DurationCollector:
    """Exposes every flow's duration counters as one Prometheus histogram."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.children: dict[tuple[str, str], _Durations] = {}

    def child(self, topic: str, group: str) -> _Durations:
        found = self.children.get((topic, group))
        if found is None:
            found = self.children[(topic, group)] = _Durations()
        return found

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            PREFIX + "handler_duration_seconds",
            "Time the handler took for one message.",
            labels=("service", "topic", "consumer_group"),
        )
        for (topic, group), d in list(self.children.items()):
            cumulative, running = [], 0
            for bound, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), d.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric([self.service_name, topic, group], cumulative, d.total)
        yield family


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
        reg = self._registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[Hashable, Any] = {}
        flow = ("service", "topic", "consumer_group")
        group = ("service", "consumer_group")
        part = ("service", "topic", "partition", "consumer_group")

        def counter(name: str, doc: str, labels: Sequence[str] = flow) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, labels: Sequence[str] = group) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=reg)

        self._consumed = counter(
            "messages_consumed", "Messages fetched and handed to processing (redeliveries count)."
        )
        self._handled = counter("messages_handled", "Messages the handler finished successfully.")
        self._duplicates = counter("duplicates_skipped", "Messages skipped as already handled.")
        self._retries = counter(
            "retries", "Handler retries after a failure.", (*flow, "error_type")
        )
        self._dead_lettered = counter(
            "dead_lettered", "Messages written to a dead-letter topic.", (*flow, "error_type")
        )
        self._decode_failures = counter(
            "decode_failures", "Messages whose bytes could not be decoded."
        )
        self._failures = counter(
            "failures", "Handler failures, before any retry.", (*flow, "error_type")
        )
        self._recovered = counter(
            "outputs_failed", "Messages whose sends failed after the handler returned."
        )
        self._commits = counter("commits", "Offset commits made.", group)
        self._commit_failures = counter(
            "commit_failures", "Offset commits refused or timed out (retried later).", group
        )
        self._dedup_unavailable = counter(
            "dedup_unavailable",
            "Dedup operations (per event id) that could not reach the dedup store.",
            group,
        )
        self._taken_over = counter(
            "dedup_claims_taken_over",
            "Dedup claims of a partition's previous owner taken over by its new owner.",
            group,
        )
        self._loop_restarts = counter(
            "loop_restarts", "Consumption loops restarted after a crash.", group
        )
        self._in_flight = gauge("in_flight_messages", "Messages in lanes, not yet final.")
        self._waiting = gauge(
            "waiting_on_claims", "Messages waiting for a dedup claim another owner holds."
        )
        self._lag = gauge(
            "consumer_lag", "High watermark minus the fetch position, per partition.", part
        )
        self._committed_lag = gauge(
            "consumer_committed_lag",
            "High watermark minus the committed offset, per partition.",
            part,
        )
        self._durations = _DurationCollector(service_name)
        reg.register(self._durations)  # type: ignore[arg-type]

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding this service's metrics (for an HTTP exposition handler)."""
        return self._registry

    def for_flow(self, consumer_group: str) -> Sensor:
        """A sensor feeding these metrics, with ``consumer_group`` bound."""
        return PrometheusSensor(self, consumer_group)

    # ------------------------------------------------------------------ children

    def child(self, metric: Counter | Gauge, *labels: str) -> Any:
        """The labelled child of ``metric`` for this service, cached."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(self.service_name, *labels)
        return found

    def durations(self, topic: str, group: str) -> _Durations:
        """The duration counters of one topic and group."""
        return self._durations.child(topic, group)

    def _g(self, consumer_group: str | None) -> str:
        return consumer_group or self.consumer_group

    def _error(self, metric: Counter, topic: str | None, error: str, group: str | None) -> Any:
        label = error[:MAX_LABEL_LENGTH] or STRING_ERROR_TYPE
        return self.child(metric, topic or UNKNOWN_TOPIC, self._g(group), label)

    # ------------------------------------------------------------------ direct recording

    def record_consumed(self, topic: str, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` messages fetched from ``topic``."""
        self.child(self._consumed, topic, self._g(consumer_group)).inc(n)

    def record_handled(
        self, topic: str | None, duration: float, consumer_group: str | None = None
    ) -> None:
        """Count one message handled successfully and observe its duration in seconds."""
        t, g = topic or UNKNOWN_TOPIC, self._g(consumer_group)
        self.durations(t, g).observe(duration)
        self.child(self._handled, t, g).inc()

    def record_duplicate(self, topic: str, consumer_group: str | None = None) -> None:
        """Count one message skipped as a duplicate."""
        self.child(self._duplicates, topic, self._g(consumer_group)).inc()

    def record_retry(self, topic: str, error_type: str, consumer_group: str | None = None) -> None:
        """Count one retry of a handler after a failure of class ``error_type``."""
        self._error(self._retries, topic, error_type, consumer_group).inc()

    def record_dead_letter(
        self, topic: str, error_type: str, consumer_group: str | None = None
    ) -> None:
        """Count one message from ``topic`` written to its dead-letter topic."""
        self._error(self._dead_lettered, topic, error_type, consumer_group).inc()

    def record_decode_failure(self, topic: str, consumer_group: str | None = None) -> None:
        """Count one message from ``topic`` whose bytes could not be decoded."""
        self.child(self._decode_failures, topic, self._g(consumer_group)).inc()

    def record_error(
        self, topic: str | None, error_type: str, consumer_group: str | None = None
    ) -> None:
        """Count one handler failure of class ``error_type``."""
        self._error(self._failures, topic, error_type, consumer_group).inc()

    def record_commit(self, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` offset commits."""
        self.child(self._commits, self._g(consumer_group)).inc(n)

    def record_dedup_unavailable(self, n: int = 1, consumer_group: str | None = None) -> None:
        """Count ``n`` event ids whose dedup operation could not reach the store."""
        self.child(self._dedup_unavailable, self._g(consumer_group)).inc(n)

    def record_loop_restart(self, consumer_group: str | None = None) -> None:
        """Count one restart of a crashed consumption loop."""
        self.child(self._loop_restarts, self._g(consumer_group)).inc()

    def set_in_flight(self, n: int, consumer_group: str | None = None) -> None:
        """Set the number of messages in lanes."""
        self.child(self._in_flight, self._g(consumer_group)).set(n)

    def set_lag(
        self,
        topic: str,
        partition: int,
        lag: int,
        consumer_group: str | None = None,
        committed_lag: int | None = None,
    ) -> None:
        """Set the fetch lag (and, if known, the committed lag) of one partition."""
        g = self._g(consumer_group)
        self.child(self._lag, topic, str(partition), g).set(lag)
        if committed_lag is not None:
            self.child(self._committed_lag, topic, str(partition), g).set(committed_lag)

    def clear_lag(self, topic: str, partition: int, consumer_group: str | None = None) -> None:
        """Forget the lag gauges of a partition this flow no longer owns."""
        g = self._g(consumer_group)
        for metric in (self._lag, self._committed_lag):
            if self._children.pop((id(metric), topic, str(partition), g), None) is not None:
                metric.remove(self.service_name, topic, str(partition), g)

    async def record_success(self, duration: float, topic: str | None = None) -> None:
        """Count one success taking ``duration`` seconds (the plan's API)."""
        self.record_handled(topic, duration)

    async def record_failure(self, error: str | BaseException, topic: str | None = None) -> None:
        """Count one failure; the label is the exception class name or ``"error"``."""
        self.record_error(topic, error_type_of(error))

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, float]:
        """Plain totals summed over labels, for tests and quick looks."""
        sources = {
            "consumed": "messages_consumed_total",
            "handled": "messages_handled_total",
            "duplicates": "duplicates_skipped_total",
            "retries": "retries_total",
            "dead_lettered": "dead_lettered_total",
            "decode_failures": "decode_failures_total",
            "failures": "failures_total",
            "commits": "commits_total",
            "dedup_unavailable": "dedup_unavailable_total",
            "loop_restarts": "loop_restarts_total",
            "in_flight": "in_flight_messages",
            "lag": "consumer_lag",
        }
        wanted = {PREFIX + name: key for key, name in sources.items()}
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


class PrometheusSensor(Sensor):
    """The :class:`Sensor` of one flow feeding a :class:`MetricsCollector`."""

    def __init__(self, metrics: MetricsCollector, consumer_group: str) -> None:
        self.metrics = metrics
        self.group = consumer_group
        self._per_topic: dict[str, tuple[Callable[[float], None], _Durations, Any]] = {}

    def _topic(self, topic: str) -> tuple[Callable[[float], None], _Durations, Any]:
        found = self._per_topic.get(topic)
        if found is None:
            m, g = self.metrics, self.group
            found = self._per_topic[topic] = (
                m.child(m._handled, topic, g).inc,
                m.durations(topic, g),
                m.child(m._duplicates, topic, g),
            )
        return found

    def on_consumed(self, topic: str, count: int) -> None:
        self.metrics.child(self.metrics._consumed, topic, self.group).inc(count)

    def on_run_done(self, batch: Sequence[ConsumedMessage], summary: RunSummary) -> None:
        for topic, durations in summary.durations.items():
            inc, histogram, _ = self._topic(topic)
            inc(len(durations))
            histogram.observe_many(durations)
        for topic, count in summary.duplicates.items():
            self._topic(topic)[2].inc(count)

    def on_failure(self, message: ConsumedMessage, error: BaseException) -> None:
        self.metrics.record_error(message.topic, error_type_of(error), self.group)

    def on_retry(self, message: ConsumedMessage, error: BaseException) -> None:
        self.metrics.record_retry(message.topic, error_type_of(error), self.group)

    def on_dead_letter(self, message: ConsumedMessage, error: BaseException) -> None:
        self.metrics.record_dead_letter(message.topic, error_type_of(error), self.group)

    def on_decode_failure(self, message: ConsumedMessage) -> None:
        self.metrics.record_decode_failure(message.topic, self.group)

    def on_recovered(self, message: ConsumedMessage) -> None:
        self.metrics.child(self.metrics._recovered, message.topic, self.group).inc()

    def on_commit(self, offsets: Mapping[TopicPartition, int], seconds: float) -> None:
        self.metrics.record_commit(1, self.group)

    def on_commit_failed(self, error: BaseException) -> None:
        self.metrics.child(self.metrics._commit_failures, self.group).inc()

    def on_dedup_unavailable(self, count: int) -> None:
        self.metrics.record_dedup_unavailable(count, self.group)

    def on_claims_taken_over(self, count: int) -> None:
        self.metrics.child(self.metrics._taken_over, self.group).inc(count)

    def on_waiting_on_claims(self, count: int) -> None:
        self.metrics.child(self.metrics._waiting, self.group).set(count)

    def on_loop_restart(self) -> None:
        self.metrics.record_loop_restart(self.group)

    def on_in_flight(self, count: int) -> None:
        self.metrics.set_in_flight(count, self.group)

    def on_lag(self, tp: TopicPartition, fetch_lag: int, committed_lag: int | None) -> None:
        self.metrics.set_lag(tp.topic, tp.partition, fetch_lag, self.group, committed_lag)

    def on_partitions_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.metrics.clear_lag(tp.topic, tp.partition, self.group)
