"""The signal validator and the trading engine run exactly-once unless told otherwise."""

from __future__ import annotations

import pytest

from core.config.settings import Settings
from services.registry import build_service


@pytest.mark.parametrize("name", ["signal_validator", "trading_engine"])
def test_verdicts_orders_and_executions_are_transactional_by_default(name: str) -> None:
    service = build_service(name, Settings())
    flows = service.orchestrator.flows
    assert flows and all(flow.transactions is not None for flow in flows)
    assert all(flow.consumer.options.isolation_level == "read_committed" for flow in flows)


@pytest.mark.parametrize("name", ["signal_validator", "trading_engine"])
def test_the_environment_can_turn_it_off_per_service(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"TRADESTREAM_SERVICES__{name}__PROCESSING_GUARANTEE", "at_least_once")
    service = build_service(name, Settings())
    assert all(flow.transactions is None for flow in service.orchestrator.flows)


def test_other_services_keep_at_least_once() -> None:
    for name in ("market_data", "strategy_runner"):
        service = build_service(name, Settings())
        assert all(flow.transactions is None for flow in service.orchestrator.flows)
