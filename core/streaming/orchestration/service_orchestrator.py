"""Composes a service from consumer flows and producers, and runs it supervised.

Each flow's fetch loop runs under a supervisor: a crash is logged with its
traceback, counted, the flow is reset without losing messages, and the loop is
restarted with backoff. Past ``max_loop_restarts`` the service reports
unhealthy and, if ``exit_on_unhealthy``, asks ``serve()`` to exit non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from prometheus_client import CollectorRegistry

from core.streaming.infrastructure.connection_manager import ConnectionManager
from core.streaming.infrastructure.message_consumer import MessageConsumer
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.infrastructure.transactions import current_transaction
from core.streaming.orchestration.consumer_flow import ConsumerFlow, FlowOptions
from core.streaming.orchestration.flow_supervisor import FlowSupervisor
from core.streaming.orchestration.lifecycle_coordinator import LifecycleCoordinator, Stage
from core.streaming.orchestration.ops_server import OpsServer
from core.streaming.reliability.metrics_collector import MetricsCollector
from core.streaming.reliability.reliability_layer import ReliabilityLayer

logger = logging.getLogger(__name__)


class _TopicEnsurer:
    """Creates the service's topics at start."""

    def __init__(self, connections: ConnectionManager, topics: list[str]) -> None:
        self._connections = connections
        self._topics = topics

    async def start(self) -> None:
        await self._connections.ensure_topics(self._topics)

    async def stop(self) -> None:
        return None


class ServiceOrchestrator:
    """A service: connections, producers, consumer flows, supervised loops."""

    def __init__(
        self,
        service_name: str,
        *,
        connections: ConnectionManager | None = None,
        metrics: MetricsCollector | None = None,
        max_loop_restarts: int = 5,
        exit_on_unhealthy: bool = False,
        restart_backoff_s: float = 0.5,
        restart_backoff_max_s: float = 30.0,
        ops_server: OpsServer | None = None,
    ) -> None:
        """Create an empty service; ``ops_server`` is wired to this service's health."""
        self.service_name = service_name
        self.connections = connections
        self.metrics = metrics
        self.max_loop_restarts = max_loop_restarts
        self.exit_on_unhealthy = exit_on_unhealthy
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.consumers: list[MessageConsumer] = []
        self.producers: list[MessageProducer] = []
        self.reliability_layers: list[ReliabilityLayer] = []
        self.flows: list[ConsumerFlow] = []
        self._supervisors: list[FlowSupervisor] = []
        self._ops_server = ops_server
        self.coordinator = LifecycleCoordinator(service_name)
        self._assembled = False
        self._status = "created"
        self._extra_registries: list[CollectorRegistry] = []
        self._internal_producers: list[MessageProducer] = []
        self.startup_topics: list[str] = []

    # ------------------------------------------------------------------ composition

    def add_consumer_flow(
        self,
        consumer: MessageConsumer,
        reliability_layer: ReliabilityLayer,
        options: FlowOptions | None = None,
    ) -> ConsumerFlow:
        """Add a consumer and the reliability layer that handles its messages."""
        self._check_not_started()
        flow = ConsumerFlow(consumer, reliability_layer, options)
        self.consumers.append(consumer)
        self.reliability_layers.append(reliability_layer)
        self.flows.append(flow)
        return flow

    def add_producer(self, producer: MessageProducer, *, internal: bool = False) -> None:
        """Add a producer; it starts before and stops after every consumer flow.

        ``internal`` producers (the dead-letter one) are managed but are not the
        service's ``producer``.
        """
        self._check_not_started()
        (self._internal_producers if internal else self.producers).append(producer)

    def ensure_topics_on_start(self, topics: list[str]) -> None:
        """Create these topics (idempotently) right after the connections start."""
        self.startup_topics.extend(t for t in topics if t not in self.startup_topics)

    def add_metrics_registry(self, registry: CollectorRegistry) -> None:
        """Expose another registry on ``/metrics``."""
        self._extra_registries.append(registry)

    @property
    def producer(self) -> MessageProducer:
        """The service's producer, for publishing from handlers."""
        if not self.producers:
            raise RuntimeError(f"service {self.service_name} has no producer (add_producer())")
        return self.producers[0]

    async def fence_previous_owners(self) -> int:
        """Finish the transactions earlier instances of this service left in flight.

        For services that rebuild state from their own outputs before
        :meth:`start`: afterwards every output an earlier instance's transaction
        holds is either committed or aborted, so a ``read_committed`` read sees
        all of them or none. Returns the partitions fenced (0 without
        exactly-once flows). Needs the connection settings only; call it
        before :meth:`start`.
        """
        fenced = 0
        for flow in self.flows:
            if flow.transactions is not None:
                fenced += await flow.transactions.fence(flow.consumer.topics)
        return fenced

    def uncommitted_elsewhere(self) -> int:
        """Records in open transactions of this service, besides the current handler's.

        Zero means every output of the other partitions' handlers is committed:
        state built from them matches what a restarted instance would read back.
        Always zero without exactly-once flows.
        """
        own = current_transaction()
        return sum(
            f.transactions.awaiting_commit(own) for f in self.flows if f.transactions is not None
        )

    @property
    def ops_server(self) -> OpsServer | None:
        """The HTTP health/metrics endpoint, if enabled."""
        return self._ops_server

    def _check_not_started(self) -> None:
        if self._assembled:
            raise RuntimeError("components cannot be added after start()")

    def _assemble(self) -> None:
        if self._assembled:
            return
        self._assembled = True
        register = self.coordinator.register
        if self.connections is not None:
            register("connections", self.connections, Stage.CONNECTIONS)
            if self.startup_topics:
                register(
                    "topics",
                    _TopicEnsurer(self.connections, self.startup_topics),
                    Stage.CONNECTIONS,
                )
        for i, producer in enumerate(self.producers):
            register(f"producer[{i}]", producer, Stage.PRODUCERS)
        for i, producer in enumerate(self._internal_producers):
            register(f"dead-letter-producer[{i}]", producer, Stage.PRODUCERS)
        for flow in self.flows:
            register(f"flow[{flow.name}]", flow, Stage.CONSUMERS)
            supervisor = FlowSupervisor(
                flow,
                max_restarts=self.max_loop_restarts,
                initial_backoff_s=self.restart_backoff_s,
                max_backoff_s=self.restart_backoff_max_s,
                on_gave_up=self._on_flow_gave_up,
            )
            self._supervisors.append(supervisor)
            register(f"loop[{flow.name}]", supervisor, Stage.LOOPS)
        if self._ops_server is not None:
            if self._ops_server.live_provider is None:
                self._ops_server.live_provider = self.liveness
            register("ops-server", self._ops_server, Stage.ENDPOINTS)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connections, producers, consumers, then loops. Idempotent."""
        if self.coordinator.is_running:
            return
        self._assemble()
        self._status = "starting"
        try:
            await self.coordinator.start()
        except BaseException:
            self._status = "failed"
            raise
        self._status = "running"
        logger.info(
            "service %s running: %d flow(s), %d producer(s)%s",
            self.service_name,
            len(self.flows),
            len(self.producers),
            f", ops endpoint on port {self._ops_server.port}" if self._ops_server else "",
        )

    async def stop(self) -> None:
        """Drain and stop everything in reverse order. Safe before start and twice."""
        if not self._assembled:
            return
        if self._status in ("stopped", "created"):
            return
        self._status = "stopping"
        await self.coordinator.stop()
        self._status = "stopped"
        logger.info("service %s stopped", self.service_name)

    async def serve(self, until: Awaitable[Any] | None = None) -> int:
        """Start, run until SIGTERM/SIGINT (or ``until``), drain; returns the exit code."""
        await self.start()
        try:
            return await self.coordinator.serve(until)
        finally:
            self._status = "stopped"

    def _on_flow_gave_up(self, supervisor: FlowSupervisor) -> None:
        logger.error(
            "service %s: flow %s crashed %d times; service is unhealthy",
            self.service_name,
            supervisor.flow.name,
            supervisor.restarts,
        )
        if self.exit_on_unhealthy:
            self.coordinator.request_stop(exit_code=1)

    # ------------------------------------------------------------------ health

    @property
    def is_live(self) -> bool:
        """Every consumption loop is alive (has not given up)."""
        return self._status == "running" and all(s.alive for s in self._supervisors)

    def liveness(self) -> dict[str, Any]:
        """Cheap report for liveness probes: the process and its loops, no network call.

        Not live only when a loop is dead or gave up while the service runs, or the
        start failed; a broker or Redis outage leaves it live (readiness reports those).
        """
        loops = {s.flow.name: s.alive for s in self._supervisors}
        live = self._status != "failed" and not any(s.gave_up for s in self._supervisors)
        if self._status == "running":
            live = live and all(loops.values())
        return {"service": self.service_name, "status": self._status, "live": live, "loops": loops}

    def registries(self) -> list[CollectorRegistry]:
        """Metric registries exposed by this service."""
        found: list[CollectorRegistry] = []
        candidates = [self.metrics] + [layer.metrics_collector for layer in self.reliability_layers]
        for collector in candidates:
            if collector is not None and collector.registry not in found:
                found.append(collector.registry)
        return found + [r for r in self._extra_registries if r not in found]

    async def health(self) -> dict[str, Any]:
        """Aggregated report: ``status``, ``live``, ``ready`` and per-component detail."""
        components = await self.coordinator.health()
        live = self.is_live
        connections_ok = True
        if self.connections is not None and self._status == "running":
            connections_ok = bool(components.get("connections", {}).get("healthy", False))
        joined = all(c.has_joined for c in self.consumers)
        flows_ok = all(f.ready for f in self.flows)
        ready = live and connections_ok and joined and flows_ok
        status = self._status
        if status == "running" and not live:
            status = "unhealthy"
        elif status == "running" and not ready:
            status = "starting"
        return {
            "service": self.service_name,
            "status": status,
            "live": live,
            "ready": ready,
            "components": components,
        }
