"""Exactly-once and retry topics are switched like the other reliability settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from core.config.settings import SettingsError, load_settings
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TRADESTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


async def _noop(event: dict[str, Any]) -> None:
    return None


def test_processing_guarantee_and_retry_topics_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRADESTREAM_RELIABILITY__RETRY_TOPICS", "[1, 10, 60]")
    monkeypatch.setenv("TRADESTREAM_SERVICES__copier__PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("TRADESTREAM_SERVICES__copier__RETRY_TOPICS", "0.5,2")
    settings = load_settings()
    assert settings.reliability.retry_topics == [1, 10, 60]
    assert settings.reliability.processing_guarantee == "at_least_once"
    copier = settings.reliability_for("copier")
    assert copier.processing_guarantee == "exactly_once"
    assert copier.retry_topics == [0.5, 2.0]

    service = (
        StreamServiceBuilder("copier", settings.redpanda, settings)
        .add_consumer_handler(["orders"], "copier", _noop)
        .build()
    )
    names = [flow.name for flow in service.flows]
    assert names == [
        "copier:orders",
        "copier.retry.1:orders.retry.1",
        "copier.retry.2:orders.retry.2",
    ]
    assert all(flow.transactions is not None for flow in service.flows)
    assert all(f.consumer.options.isolation_level == "read_committed" for f in service.flows)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRADESTREAM_RELIABILITY__PROCESSING_GUARANTEE", "exactly-once"),
        ("TRADESTREAM_RELIABILITY__RETRY_TOPICS", "1,0"),
        ("TRADESTREAM_SERVICES__svc__RETRY_TOPICS", "[1, -2]"),
        ("TRADESTREAM_SERVICES__svc__PROCESSING_GUARANTEE", "twice"),
    ],
)
def test_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert variable.upper() in str(caught.value).upper()


def test_a_flow_override_wins_and_blocking_retries_stay_the_default() -> None:
    settings = load_settings()
    builder = StreamServiceBuilder("svc", settings.redpanda, settings)
    builder.add_consumer_handler(["a"], "ga", _noop)
    builder.add_consumer_handler(
        ["b"], "gb", _noop, retry_topics=[1], processing_guarantee="exactly_once"
    )
    service = builder.build()
    assert [flow.name for flow in service.flows] == ["ga:a", "gb:b", "gb.retry.1:b.retry.1"]
    plain, main, retry = service.flows
    assert plain.transactions is None
    assert main.transactions is not None and retry.transactions is not None
    assert type(plain.layer.error_handler).__name__ == "ErrorHandler"
    assert type(main.layer.error_handler).__name__ == "RetryTopicErrorHandler"
    assert "b.retry.1" in service.startup_topics and "b.dlq" in service.startup_topics
