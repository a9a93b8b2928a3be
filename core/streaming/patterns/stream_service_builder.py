"""Fluent assembly of a streaming service from its parts.

Call order does not matter: flows are assembled in :meth:`build`, so
``with_redis`` after ``add_consumer_handler`` still gives that flow dedup.
Reliability features default from ``Settings`` (``settings.reliability_for(name)``),
so a deployment can switch dedup, retries, dead letters or metrics for one
service with environment variables; per-flow keyword overrides win over both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.config.settings import RedpandaSettings, ReliabilitySettings, Settings
from core.streaming.clients import Redis
from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.ops_server import OpsServer
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.patterns.flow_assembly import (
    DedupKey,
    FlowAssembler,
    FlowOverrides,
    FlowSpec,
    flow_settings,
    parse_overrides,
)
from core.streaming.reliability.error_handler import ErrorHandler
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.reliability.steps import BatchHandler, Handler

__all__ = ["DedupKey", "FlowOverrides", "StreamServiceBuilder"]

logger = logging.getLogger(__name__)


class StreamServiceBuilder:
    """Builds a :class:`ServiceOrchestrator` from handlers and reliability choices."""

    def __init__(
        self,
        service_name: str,
        config: RedpandaSettings | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.service_name = service_name
        self.settings = settings or Settings()
        self.config = config or self.settings.redpanda
        self._redis_client: Redis | None = None
        self._use_redis = False
        self._error_handler: ErrorHandler | None = None
        self._retry: dict[str, int] = {}
        self._defaults: dict[str, Any] = {}
        self._metrics_collector: MetricsCollector | None = None
        self._flows: list[FlowSpec] = []
        self._want_producer = False
        self._produced_topics: list[str] = []
        self._ensure_topics = True
        self._ops: tuple[str, int] | None = None
        self._built: ServiceOrchestrator | None = None

    # ------------------------------------------------------------------ choices

    def with_redis(self, redis_client: Redis | None = None) -> StreamServiceBuilder:
        """Use Redis for deduplication: this client, or the one from settings."""
        self._redis_client = redis_client
        self._use_redis = True
        return self

    def with_error_handling(
        self,
        error_handler: ErrorHandler | None = None,
        *,
        max_attempts: int | None = None,
        backoff_initial_ms: int | None = None,
        backoff_max_ms: int | None = None,
    ) -> StreamServiceBuilder:
        """Use this error handler for every flow, or tune the default retry policy."""
        self._error_handler = error_handler
        for name, value in (
            ("retry_max_attempts", max_attempts),
            ("retry_backoff_initial_ms", backoff_initial_ms),
            ("retry_backoff_max_ms", backoff_max_ms),
        ):
            if value is not None:
                self._retry[name] = value
        return self

    def with_reliability_defaults(self, **fields: Any) -> StreamServiceBuilder:
        """This service's own defaults for reliability settings, under the environment.

        ``with_reliability_defaults(processing_guarantee="exactly_once")`` makes a
        service exactly-once unless ``TRADESTREAM_RELIABILITY__PROCESSING_GUARANTEE``
        or ``TRADESTREAM_SERVICES__<service>__PROCESSING_GUARANTEE`` says otherwise.
        """
        ReliabilitySettings.model_validate(fields)  # refuses unknown fields and bad values
        self._defaults.update(fields)
        return self

    def with_metrics(
        self, metrics_collector: MetricsCollector | None = None
    ) -> StreamServiceBuilder:
        """Use this metrics collector (one is made from settings otherwise)."""
        self._metrics_collector = metrics_collector
        return self

    def with_ops_server(
        self, host: str | None = None, port: int | None = None
    ) -> StreamServiceBuilder:
        """Serve /health/live, /health/ready and /metrics over HTTP."""
        obs = self.settings.observability
        self._ops = (host or obs.http_host, obs.http_port if port is None else port)
        return self

    def ensure_topics(self, enabled: bool = True) -> StreamServiceBuilder:
        """Create consumed, produced and dead-letter topics at start (default on)."""
        self._ensure_topics = enabled
        return self

    def add_consumer_handler(
        self,
        topics: Sequence[str],
        group_id: str,
        handler_func: Handler,
        **overrides: Any,
    ) -> StreamServiceBuilder:
        """Consume ``topics`` in ``group_id`` and hand each event to ``handler_func``.

        Keyword overrides are the fields of :class:`FlowOverrides` (``dedup``,
        ``dedup_key``, ``retry_attempts``, ``dead_letter_topic``, ``ordering``,
        ``concurrency``, ``commit_policy``, ``handler_timeout_s``, ``steps``,
        ``processing_guarantee``, ...).

        ``processing_guarantee="exactly_once"`` commits the handler's sends (through
        the service's producers), its dead letters and the input offsets in one Kafka
        transaction per input partition and checkpoint; it needs
        ``ordering="partition"`` and a per-event handler.
        """
        if isinstance(topics, str):
            topics = [topics]
        self._flows.append(
            FlowSpec(list(topics), group_id, handler_func, parse_overrides(overrides))
        )
        return self

    def add_batch_handler(
        self,
        topics: Sequence[str],
        group_id: str,
        handler_func: BatchHandler,
        **overrides: Any,
    ) -> StreamServiceBuilder:
        """Consume ``topics`` in ``group_id`` and hand each run of events to ``handler_func``.

        The handler gets a list of envelopes (up to one lane's run). Raising fails
        every event of the list (retried, then dead-lettered one by one); raising
        :class:`~core.streaming.reliability.steps.BatchItemsFailed` fails only
        the events it names. Overrides as for :meth:`add_consumer_handler`.
        """
        if isinstance(topics, str):
            topics = [topics]

        async def unused(event: dict[str, Any]) -> None:  # pragma: no cover
            raise RuntimeError("a batch flow has no per-event handler")

        self._flows.append(
            FlowSpec(list(topics), group_id, unused, parse_overrides(overrides), handler_func)
        )
        return self

    def add_producer(self, topics: Sequence[str] = ()) -> StreamServiceBuilder:
        """Give the service a producer (``orchestrator.producer``); ``topics`` are ensured."""
        self._want_producer = True
        self._produced_topics.extend(topics)
        return self

    # ------------------------------------------------------------------ assembly

    def reliability(self) -> ReliabilitySettings:
        """The service's reliability settings: settings, per-service env overrides, builder."""
        base = self.settings.reliability_for(self.service_name)
        if self._defaults:
            explicit = self.settings.reliability_fields_set(self.service_name)
            update = {k: v for k, v in self._defaults.items() if k not in explicit}
            base = ReliabilitySettings.model_validate(base.model_dump() | update)
        return base.model_copy(update=self._retry) if self._retry else base

    def build(self) -> ServiceOrchestrator:
        """Assemble the service. Calling it again returns the same orchestrator."""
        if self._built is not None:
            return self._built
        rel = self.reliability()
        dedup_flows = [spec for spec in self._flows if self._dedup_on(spec, rel)]
        connections = ConnectionManager(
            self.settings.model_copy(update={"redpanda": self.config}),
            use_redis=bool(dedup_flows),
            redis_client=self._redis_client if dedup_flows else None,
        )
        metrics = None
        if rel.metrics_enabled:
            metrics = self._metrics_collector or MetricsCollector(self.service_name)
        ops = None
        if self._ops is None and self.settings.observability.http_enabled:
            self.with_ops_server()
        orchestrator = ServiceOrchestrator(
            self.service_name,
            connections=connections,
            metrics=metrics,
            max_loop_restarts=rel.max_loop_restarts,
            exit_on_unhealthy=rel.exit_on_unhealthy,
        )
        if self._ops is not None:
            ops = OpsServer(
                orchestrator.health, orchestrator.registries, host=self._ops[0], port=self._ops[1]
            )
            orchestrator._ops_server = ops
        producer: MessageProducer | None = None
        if self._want_producer:
            producer = MessageProducer(
                self.config, self.service_name, stop_timeout_s=rel.stop_timeout_s
            )
            orchestrator.add_producer(producer)
        needs_dlq = any(
            self._dead_letters_on(spec, rel) or self._flow_settings(spec, rel).retry_topics
            for spec in self._flows
        )
        dlq_producer = producer
        if needs_dlq and dlq_producer is None and self._error_handler is None:
            dlq_producer = MessageProducer(
                self.config, f"{self.service_name}-dlq", stop_timeout_s=rel.stop_timeout_s
            )
            orchestrator.add_producer(dlq_producer, internal=True)
        assembler = FlowAssembler(
            self.service_name,
            self.config,
            orchestrator,
            connections,
            metrics,
            dlq_producer,
            self._error_handler,
            self.settings.redis.dedup_shard_count,
        )
        topics: list[str] = []
        for spec in self._flows:
            flow_rel = self._flow_settings(spec, rel)
            topics.extend(assembler.add(spec, flow_rel, dedup=spec in dedup_flows))
        topics.extend(self._produced_topics)
        if self._ensure_topics:
            orchestrator.ensure_topics_on_start(topics)
        if (
            dedup_flows
            and self._redis_client is None
            and self.settings.redis.is_embedded
            and not self.config.is_embedded
        ):
            logger.warning(
                "%s: dedup uses the in-process store (redis url memory://); "
                "it is not shared between processes or restarts",
                self.service_name,
            )
        self._built = orchestrator
        return orchestrator

    def _dedup_on(self, spec: FlowSpec, rel: ReliabilitySettings) -> bool:
        """Code asks for dedup (with_redis, or dedup=True on the flow); settings may veto."""
        wanted = self._use_redis if spec.overrides.dedup is None else spec.overrides.dedup
        return wanted and self._flow_settings(spec, rel).dedup_enabled

    def _dead_letters_on(self, spec: FlowSpec, rel: ReliabilitySettings) -> bool:
        return (
            spec.overrides.dead_letters
            if spec.overrides.dead_letters is not None
            else rel.dead_letter_enabled
        )

    def _flow_settings(self, spec: FlowSpec, rel: ReliabilitySettings) -> ReliabilitySettings:
        return flow_settings(spec, rel)
