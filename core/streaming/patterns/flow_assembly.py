"""One consumer flow from its spec: consumer, error step, dedup, transactions, layer.

The builder (:mod:`stream_service_builder`) collects flow specs and service-wide
parts; :class:`FlowAssembler` turns each spec into the flows it needs: the flow
itself and, with retry topics, one flow per retry topic with the same handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core.config.settings import RedpandaSettings, ReliabilitySettings
from core.streaming.clients import ConsumerClient, ConsumerOptions, create_consumer
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.infrastructure.due_time_gate import DueTimeGate
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.infrastructure.offset_tracker import CommitPolicy
from core.streaming.infrastructure.transactions import PartitionTransactions
from core.streaming.orchestration.consumer_flow import FlowOptions
from core.streaming.orchestration.dispatcher import OrderingMode
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.reliability.deduplication_manager import DeduplicationManager
from core.streaming.reliability.error_handler import ErrorHandler
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.reliability.reliability_layer import ReliabilityLayer
from core.streaming.reliability.retry_metrics import RetryTopicMetrics
from core.streaming.reliability.retry_topics import RetryTopicErrorHandler, retry_topic_name
from core.streaming.reliability.sensors import Sensor
from core.streaming.reliability.steps import BatchHandler, Handler, Step

DedupKey = Callable[[dict[str, Any]], str | None]


@dataclass(frozen=True)
class FlowOverrides:
    """Per-flow settings that win over the service's; ``None`` keeps the default."""

    dedup: bool | None = None
    retry_attempts: int | None = None
    retry_backoff_initial_ms: int | None = None
    retry_backoff_max_ms: int | None = None
    dead_letters: bool | None = None
    dead_letter_topic: str | None = None
    ordering: OrderingMode | None = None
    concurrency: int | None = None
    commit_policy: CommitPolicy | None = None
    max_in_flight: int | None = None
    auto_offset_reset: str = "earliest"
    error_handler: ErrorHandler | None = None
    dedup_key: DedupKey | None = None
    handler_timeout_s: float | None = None
    steps: tuple[Step, ...] = ()
    processing_guarantee: str | None = None
    isolation_level: str = "read_committed"
    retry_topics: tuple[float, ...] | None = None


@dataclass
class FlowSpec:
    """What ``add_consumer_handler`` / ``add_batch_handler`` asked for."""

    topics: list[str]
    group_id: str
    handler: Handler
    overrides: FlowOverrides = field(default_factory=FlowOverrides)
    batch_handler: BatchHandler | None = None


def parse_overrides(values: dict[str, Any]) -> FlowOverrides:
    """Per-flow overrides, refusing combinations that cannot mean what they say."""
    steps = values.get("steps")
    if steps is not None:
        values = {**values, "steps": tuple(steps)}
    delays = values.get("retry_topics")
    if delays is not None:
        values = {**values, "retry_topics": tuple(_seconds(d) for d in delays)}
    overrides = FlowOverrides(**values)
    if overrides.processing_guarantee not in (None, "at_least_once", "exactly_once"):
        raise ValueError(
            "processing_guarantee must be 'at_least_once' or 'exactly_once', "
            f"got {overrides.processing_guarantee!r}"
        )
    if overrides.ordering == "partition" and (overrides.concurrency or 1) > 1:
        raise ValueError(
            "ordering='partition' runs one lane per partition; for concurrency within a "
            "partition use ordering='key' (per-key order) or 'unordered'"
        )
    if overrides.retry_topics and overrides.error_handler is not None:
        raise ValueError("retry_topics replace the flow's error handler; give one or the other")
    return overrides


def _seconds(delay: float | timedelta) -> float:
    value = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if value <= 0:
        raise ValueError(f"retry topic delays must be positive, got {delay!r}")
    return value


def flow_settings(spec: FlowSpec, rel: ReliabilitySettings) -> ReliabilitySettings:
    """The service's reliability settings with the flow's overrides applied."""
    o = spec.overrides
    update: dict[str, Any] = {}
    for field_name, value in (
        ("retry_max_attempts", o.retry_attempts),
        ("retry_backoff_initial_ms", o.retry_backoff_initial_ms),
        ("retry_backoff_max_ms", o.retry_backoff_max_ms),
        ("dead_letter_enabled", o.dead_letters),
        ("ordering", o.ordering),
        ("default_concurrency", o.concurrency),
        ("max_in_flight", o.max_in_flight),
        ("processing_guarantee", o.processing_guarantee),
        ("retry_topics", list(o.retry_topics) if o.retry_topics is not None else None),
    ):
        if value is not None:
            update[field_name] = value
    return rel.model_copy(update=update) if update else rel


def exactly_once(spec: FlowSpec, flow_rel: ReliabilitySettings) -> bool:
    """Whether the flow runs exactly-once; refuses what exactly-once cannot keep."""
    if flow_rel.processing_guarantee != "exactly_once":
        return False
    problems = []
    if flow_rel.ordering != "partition":
        problems.append(
            f"ordering={flow_rel.ordering!r}: a partition's transaction commits between "
            "runs of its one lane, so exactly-once needs ordering='partition'"
        )
    if spec.batch_handler is not None:
        problems.append("a batch handler cannot tell which event a failed send belonged to")
    policy = spec.overrides.commit_policy
    interval = (
        0
        if policy is not None and policy.per_message
        else (policy.interval_ms if policy is not None else flow_rel.commit_interval_ms)
    )
    if interval * 2 > flow_rel.transaction_timeout_ms:
        problems.append(
            f"the commit interval ({interval} ms) must be at most half of "
            f"transaction_timeout_ms ({flow_rel.transaction_timeout_ms} ms)"
        )
    if problems:
        raise ValueError(f"flow {spec.group_id} cannot run exactly_once: " + "; ".join(problems))
    return True


@dataclass
class FlowAssembler:
    """The service-wide parts flows are made of, and the making."""

    service_name: str
    config: RedpandaSettings
    orchestrator: ServiceOrchestrator
    connections: ConnectionManager
    metrics: MetricsCollector | None
    dlq_producer: MessageProducer | None
    shared_error_handler: ErrorHandler | None
    dedup_shards: int = 1

    def add(self, spec: FlowSpec, flow_rel: ReliabilitySettings, *, dedup: bool) -> list[str]:
        """Add the flows of ``spec``; returns the topics they need created."""
        if flow_rel.revocation_timeout_s * 2000 > self.config.rebalance_timeout_ms:
            raise ValueError(
                f"flow {spec.group_id}: revocation_timeout_s "
                f"({flow_rel.revocation_timeout_s:g} s) must be at most half of the "
                f"consumer's rebalance_timeout_ms ({self.config.rebalance_timeout_ms} ms)"
            )
        eos = exactly_once(spec, flow_rel)
        delays = flow_rel.retry_topics
        if delays and self.shared_error_handler is not None:
            raise ValueError("retry_topics replace the error handler given to the builder")
        main = self._error_handler(spec, flow_rel, delays, 0)
        self._add_one(spec, flow_rel, spec.topics, spec.group_id, main, dedup, eos)
        topics = list(spec.topics)
        for level in range(1, len(delays) + 1):
            names = [retry_topic_name(t, level) for t in spec.topics]
            handler = self._error_handler(spec, flow_rel, delays, level)
            assert isinstance(handler, RetryTopicErrorHandler)
            group = f"{spec.group_id}.retry.{level}"
            self._add_one(spec, flow_rel, names, group, handler, dedup, eos, gate_for=handler)
            topics.extend(names)
        if flow_rel.dead_letter_enabled:
            topics.extend(main.dead_letter_topic_for(t) for t in spec.topics)
        return topics

    def _error_handler(
        self, spec: FlowSpec, flow_rel: ReliabilitySettings, delays: list[float], level: int
    ) -> ErrorHandler:
        common: dict[str, Any] = {
            "consumer_group": spec.group_id if level == 0 else f"{spec.group_id}.retry.{level}",
            "backoff_initial_ms": flow_rel.retry_backoff_initial_ms,
            "backoff_max_ms": flow_rel.retry_backoff_max_ms,
            "dead_letter_enabled": flow_rel.dead_letter_enabled,
            "dead_letter_suffix": flow_rel.dead_letter_suffix,
            "dead_letter_topic": spec.overrides.dead_letter_topic,
            "metrics": self.metrics,
        }
        if delays:
            return RetryTopicErrorHandler(
                self.dlq_producer, self.service_name, delays_s=delays, level=level, **common
            )
        found = spec.overrides.error_handler or self.shared_error_handler
        if found is not None:
            return found
        return ErrorHandler(
            self.dlq_producer,
            self.service_name,
            max_attempts=flow_rel.retry_max_attempts,
            **common,
        )

    def _add_one(
        self,
        spec: FlowSpec,
        flow_rel: ReliabilitySettings,
        topics: list[str],
        group_id: str,
        error_handler: ErrorHandler,
        dedup: bool,
        eos: bool,
        *,
        gate_for: RetryTopicErrorHandler | None = None,
    ) -> None:
        sensors: list[Sensor] = []
        factory: Callable[..., ConsumerClient] = create_consumer
        if gate_for is not None:
            factory = _gate_factory(gate_for)
        if flow_rel.retry_topics and self.metrics is not None:
            sensors.append(RetryTopicMetrics.of(self.metrics).for_flow(group_id))
        consumer = MessageConsumer(
            self.config,
            topics,
            group_id,
            commit_policy=spec.overrides.commit_policy
            or CommitPolicy(every=flow_rel.commit_every, interval_ms=flow_rel.commit_interval_ms),
            auto_offset_reset="earliest" if gate_for else spec.overrides.auto_offset_reset,
            commit_timeout_s=flow_rel.stop_timeout_s,
            client_factory=factory,
            options=ConsumerOptions(
                isolation_level="read_committed" if eos else spec.overrides.isolation_level
            ),
        )
        deduplicator = None
        if dedup:
            deduplicator = DeduplicationManager(
                self.connections.redis,
                self.service_name,
                flow_rel.dedup_ttl_seconds,
                # Retry flows share the keys of their main flow: an event handled on a
                # retry topic is a duplicate on the main topic too.
                consumer_group=spec.group_id,
                processing_ttl_ms=flow_rel.dedup_processing_ttl_ms,
                local_cache_size=flow_rel.dedup_local_cache_size,
                failure_policy=flow_rel.dedup_failure_policy,
                shards=self.dedup_shards,
                metrics=self.metrics,
            )
        layer = ReliabilityLayer(
            self.service_name,
            spec.handler,
            consumer,
            deduplicator=deduplicator,
            error_handler=error_handler,
            metrics_collector=self.metrics,
            steps=spec.overrides.steps,
            dedup_key=spec.overrides.dedup_key,
            handler_timeout_s=spec.overrides.handler_timeout_s or flow_rel.handler_timeout_s,
            batch_handler=spec.batch_handler,
            sensors=sensors,
            ordered=flow_rel.ordering != "unordered",
            transactions=PartitionTransactions(
                self.config,
                group_id,
                transaction_timeout_ms=flow_rel.transaction_timeout_ms,
                close_timeout_s=flow_rel.stop_timeout_s,
            )
            if eos
            else None,
        )
        self.orchestrator.add_consumer_flow(
            consumer,
            layer,
            FlowOptions(
                ordering=flow_rel.ordering,
                concurrency=flow_rel.default_concurrency,
                max_in_flight=flow_rel.max_in_flight,
                max_in_flight_bytes=flow_rel.max_in_flight_bytes,
                drain_timeout_s=flow_rel.drain_timeout_s,
                revocation_timeout_s=flow_rel.revocation_timeout_s,
                stop_timeout_s=flow_rel.stop_timeout_s,
            ),
        )


def _gate_factory(handler: RetryTopicErrorHandler) -> Callable[..., ConsumerClient]:
    """Consumers of a retry flow: held until due, reported in the handler's health."""

    def make(*args: Any, **kwargs: Any) -> ConsumerClient:
        gate = DueTimeGate(create_consumer(*args, **kwargs))
        gate.sensor = handler.sensor
        handler.gate = gate
        return gate

    return make
