"""The demo's own settings: bounded memory on the embedded backends, explicit settings win."""

from __future__ import annotations

import pytest

from core.config.settings import load_settings
from services.cli.demo import (
    DEMO_DEDUP_TTL_S,
    DEMO_REMEMBERED_IDS,
    DEMO_RETENTION_RECORDS,
    demo_settings,
)


def test_the_embedded_demo_bounds_retention_dedup_ids_and_writes_no_snapshots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "REDPANDA__EMBEDDED_RETENTION_RECORDS",
        "RELIABILITY__DEDUP_TTL_SECONDS",
        "TRADING__SNAPSHOT_EVERY",
        "TRADING__REMEMBERED_IDS",
    ):
        monkeypatch.delenv(f"TRADESTREAM_{name}", raising=False)
    settings = demo_settings(load_settings())
    assert settings.redpanda.embedded_retention_records == DEMO_RETENTION_RECORDS
    assert settings.reliability.dedup_ttl_seconds == DEMO_DEDUP_TTL_S
    assert settings.trading.snapshot_every == 0
    assert settings.trading.remembered_ids == DEMO_REMEMBERED_IDS
    assert settings.trading.market_always_open
    assert settings.trading.strategy_routes == {"momentum": ["paper", "paper-shadow"]}


def test_settings_given_explicitly_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__EMBEDDED_RETENTION_RECORDS", "123")
    monkeypatch.setenv("TRADESTREAM_RELIABILITY__DEDUP_TTL_SECONDS", "77")
    monkeypatch.setenv("TRADESTREAM_TRADING__SNAPSHOT_EVERY", "9")
    monkeypatch.setenv("TRADESTREAM_TRADING__REMEMBERED_IDS", "99")
    settings = demo_settings(load_settings())
    assert settings.trading.remembered_ids == 99
    assert settings.redpanda.embedded_retention_records == 123
    assert settings.reliability.dedup_ttl_seconds == 77
    assert settings.trading.snapshot_every == 9


def test_on_real_servers_the_demo_changes_none_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("TRADESTREAM_REDIS__URL", "redis://127.0.0.1:6379/0")
    settings = demo_settings(load_settings())
    assert settings.reliability.dedup_ttl_seconds == 3600
    assert settings.trading.snapshot_every == 10_000
    assert settings.trading.remembered_ids == 20_000
