"""Prometheus metrics of retry topics, in the registry of a service's ``MetricsCollector``.

One set of metrics per registry; each flow gets a :class:`~sensors.Sensor` with
its consumer group bound (added to the flow's sensors by the builder).
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge, Histogram

from core.streaming.infrastructure.consumed_message import ConsumedMessage
from core.streaming.reliability.metrics_collector import PREFIX, MetricsCollector
from core.streaming.reliability.sensors import Sensor
from core.streaming.types import TopicPartition

#: How late a held retry partition is resumed after its head came due.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

_metrics: weakref.WeakKeyDictionary[MetricsCollector, RetryTopicMetrics] = (
    weakref.WeakKeyDictionary()
)


class RetryTopicMetrics:
    """Scheduled retries, held retry partitions and due-time lateness of one service."""

    def __init__(self, collector: MetricsCollector) -> None:
        registry = collector.registry
        self.service = collector.service_name
        self.scheduled = Counter(
            PREFIX + "retry_topic_scheduled",
            "Failed messages moved to a retry topic (non-blocking retries).",
            ("service", "topic", "retry_topic", "consumer_group"),
            registry=registry,
        )
        self.held = Gauge(
            PREFIX + "retry_partitions_held",
            "Retry partitions paused until their head message is due.",
            ("service", "consumer_group"),
            registry=registry,
        )
        self.lateness = Histogram(
            PREFIX + "retry_due_lateness_seconds",
            "Seconds between a held retry message's due time and the resume of its partition.",
            ("service", "consumer_group"),
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )

    @classmethod
    def of(cls, collector: MetricsCollector) -> RetryTopicMetrics:
        """The retry metrics in ``collector``'s registry (made once per collector)."""
        found = _metrics.get(collector)
        if found is None:
            found = _metrics[collector] = cls(collector)
        return found

    def for_flow(self, consumer_group: str) -> Sensor:
        """A sensor of one flow feeding these metrics."""
        return _RetrySensor(self, consumer_group)


class _RetrySensor(Sensor):
    def __init__(self, metrics: RetryTopicMetrics, consumer_group: str) -> None:
        self.metrics = metrics
        self.group = consumer_group
        self._held = metrics.held.labels(metrics.service, consumer_group)
        self._lateness = metrics.lateness.labels(metrics.service, consumer_group)

    def on_retry_scheduled(self, message: ConsumedMessage, retry_topic: str) -> None:
        m = self.metrics
        m.scheduled.labels(m.service, message.topic, retry_topic, self.group).inc()

    def on_retry_held(self, partitions: int) -> None:
        self._held.set(partitions)

    def on_retry_released(self, tp: TopicPartition, late_s: float) -> None:
        self._lateness.observe(late_s)
