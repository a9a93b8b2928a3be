"""Choose, per service and without a code change, which shape of a service runs.

During a migration a service exists twice: as a ``StreamProcessor`` subclass
(the legacy shape) and as a builder-made service (the builder shape). Both run
on the same reliability path. The ``shape`` reliability setting picks one, so a
deployment moves a service back and forth with an environment variable::

    TRADESTREAM_SERVICES__trading_engine__shape=builder   # or legacy (the default)

The entry point calls :func:`build_selected` with a factory for each shape and
runs what it returns with :func:`serve`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from core.config.settings import ServiceShape, Settings
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator

logger = logging.getLogger(__name__)

SHAPE_METRIC = "tradestream_service_shape"


class RunnableService(Protocol):
    """A service object with its own start and stop around an orchestrator."""

    @property
    def orchestrator(self) -> ServiceOrchestrator: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def selected_shape(service_name: str, settings: Settings) -> ServiceShape:
    """The shape the settings select for ``service_name`` (per-service override first)."""
    return settings.reliability_for(service_name).shape


def build_selected(
    service_name: str,
    settings: Settings,
    *,
    legacy: Callable[[], RunnableService],
    builder: Callable[[], RunnableService],
) -> RunnableService:
    """Build the shape of ``service_name`` that ``settings`` select; only that one is built.

    Both factories must make a service of that name (matched as the settings
    match it: any case, ``-`` and ``_`` alike), so the switch, the reliability
    overrides, the dedup keys and the metrics all refer to the same service.
    The service reports its shape as the ``tradestream_service_shape`` gauge.
    """
    shape = selected_shape(service_name, settings)
    service = legacy() if shape == "legacy" else builder()
    orchestrator = service.orchestrator
    if _same_name(orchestrator.service_name) != _same_name(service_name):
        raise ValueError(
            f"the {shape} factory of {service_name!r} made a service named "
            f"{orchestrator.service_name!r}; both shapes must use the name the switch uses"
        )
    if settings.reliability_for(service_name).metrics_enabled:
        orchestrator.add_metrics_registry(_shape_registry(orchestrator.service_name, shape))
    logger.info("service %s: running the %s shape", orchestrator.service_name, shape)
    return service


async def serve(service: RunnableService, until: Awaitable[Any] | None = None) -> int:
    """Start ``service``, run until SIGTERM/SIGINT (or ``until``), stop it; the exit code.

    Unlike ``service.orchestrator.serve()``, the service's own ``start()`` and
    ``stop()`` run, so what a subclass does around the orchestrator is kept.
    """
    await service.start()
    try:
        return await service.orchestrator.serve(until)
    finally:
        await service.stop()


def _same_name(name: str) -> str:
    return name.lower().replace("-", "_")


def _shape_registry(service_name: str, shape: ServiceShape) -> CollectorRegistry:
    registry = CollectorRegistry()
    gauge = Gauge(
        SHAPE_METRIC,
        "1 for the shape this service runs: legacy (StreamProcessor adapter) or builder.",
        ("service", "shape"),
        registry=registry,
    )
    gauge.labels(service_name, shape).set(1)
    return registry
