"""Consumer options and group timeouts: settings, validation, and what each backend gets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from core.config.settings import RedpandaSettings, SettingsError, load_settings
from core.streaming.clients import ConsumerOptions, create_consumer
from core.streaming.embedded import InMemoryConsumer, drop_broker
from core.streaming.kafka import KafkaConsumerClient


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TRADESTREAM_REDPANDA__"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_group_timeouts_come_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__SESSION_TIMEOUT_MS", "20000")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__HEARTBEAT_INTERVAL_MS", "5000")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__REBALANCE_TIMEOUT_MS", "60000")
    redpanda = load_settings().redpanda
    assert (redpanda.session_timeout_ms, redpanda.heartbeat_interval_ms) == (20_000, 5_000)
    assert (redpanda.rebalance_timeout_ms, redpanda.max_poll_interval_ms) == (60_000, 300_000)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("HEARTBEAT_INTERVAL_MS", "4000", "third of session_timeout_ms"),
        ("REBALANCE_TIMEOUT_MS", "5000", "rebalance_timeout_ms (5000) must not be below"),
        ("MAX_POLL_INTERVAL_MS", "5000", "max_poll_interval_ms (5000) must not be below"),
        ("SESSION_TIMEOUT_MS", "0", "SESSION_TIMEOUT_MS"),
    ],
)
def test_contradicting_group_timeouts_are_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(f"TRADESTREAM_REDPANDA__{variable}", value)
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings()


def test_options_take_unset_timeouts_from_settings_and_keep_their_own() -> None:
    settings = RedpandaSettings(session_timeout_ms=12_000, heartbeat_interval_ms=4_000)
    resolved = ConsumerOptions(rebalance_timeout_ms=45_000).resolve(settings)
    assert resolved.session_timeout_ms == 12_000
    assert resolved.heartbeat_interval_ms == 4_000
    assert resolved.max_poll_interval_ms == 300_000
    assert resolved.rebalance_timeout_ms == 45_000
    with pytest.raises(ValueError, match="third"):
        ConsumerOptions(heartbeat_interval_ms=5_000).resolve(settings)
    with pytest.raises(ValueError, match="must not be below"):
        ConsumerOptions(rebalance_timeout_ms=1_000).resolve(settings)


@pytest.mark.parametrize(
    "bad",
    [
        {"auto_offset_reset": "smallest"},
        {"isolation_level": "serializable"},
        {"max_poll_records": 0},
        {"session_timeout_ms": -1},
    ],
)
def test_options_refuse_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConsumerOptions(**bad)  # type: ignore[arg-type]


async def test_the_kafka_consumer_gets_every_option() -> None:
    settings = RedpandaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=30_000)
    options = ConsumerOptions(
        auto_offset_reset="latest",
        max_poll_records=7,
        client_id="c-1",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=2_000,
        max_poll_interval_ms=90_000,
        rebalance_timeout_ms=40_000,
        isolation_level="read_committed",
    )
    client = create_consumer(settings, ["t"], "g", options)
    assert isinstance(client, KafkaConsumerClient)
    raw = client._consumer
    assert raw._session_timeout_ms == 6_000
    assert raw._heartbeat_interval_ms == 2_000
    assert raw._max_poll_interval_ms == 90_000
    assert raw._rebalance_timeout_ms == 40_000
    assert raw._max_poll_records == 7
    assert raw._client._client_id == "c-1"
    assert raw._isolation_level == "read_committed"
    assert raw._auto_offset_reset == "latest"
    # The broker may hold a join request for the whole rebalance timeout.
    assert raw._request_timeout_ms == 45_000
    await client.stop()


def test_the_embedded_consumer_gets_the_settings_timeouts() -> None:
    url = "memory://options-test"
    try:
        settings = RedpandaSettings(
            bootstrap_servers=url, session_timeout_ms=9_000, rebalance_timeout_ms=20_000
        )
        client = create_consumer(settings, ["t"], "g", ConsumerOptions(max_poll_records=3))
        assert isinstance(client, InMemoryConsumer)
        assert client.options.session_timeout_ms == 9_000
        assert client.options.rebalance_timeout_ms == 20_000
        assert client.options.max_poll_records == 3
    finally:
        drop_broker(url)
