"""Settings: environment parsing, nested delimiter, bad values, hidden secrets."""

from __future__ import annotations

import logging

import pytest

from core.config.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TRADESTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


def test_defaults_select_the_embedded_backends() -> None:
    settings = load_settings()
    assert settings.redpanda.is_embedded and settings.redis.is_embedded
    assert settings.broker_namespace == "paper"


def test_nested_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__COMPRESSION_TYPE", "zstd")
    monkeypatch.setenv("TRADESTREAM_RELIABILITY__DEDUP_ENABLED", "false")
    monkeypatch.setenv("TRADESTREAM_RELIABILITY__COMMIT_EVERY", "42")
    monkeypatch.setenv("TRADESTREAM_BROKER_NAMESPACE", "live")
    settings = load_settings()
    assert settings.redpanda.bootstrap_list == ["k1:9092", "k2:9093"]
    assert settings.redpanda.compression_type == "zstd"
    assert settings.reliability.dedup_enabled is False
    assert settings.reliability.commit_every == 42
    assert settings.broker_namespace == "live"


def test_dotenv_file_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(".env", "w") as fh:
        fh.write("TRADESTREAM_REDPANDA__CLIENT_ID=from-dotenv\n")
    assert load_settings().redpanda.client_id == "from-dotenv"


def test_per_service_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_SERVICES__trading_engine__dedup_enabled", "false")
    monkeypatch.setenv("TRADESTREAM_SERVICES__trading_engine__retry_max_attempts", "7")
    settings = load_settings()
    engine = settings.reliability_for("trading_engine")
    assert engine.dedup_enabled is False and engine.retry_max_attempts == 7
    assert settings.reliability_for("signal_validator").dedup_enabled is True


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS": "no-port-here"},
            "REDPANDA__BOOTSTRAP_SERVERS",
        ),
        ({"TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS": "h:99999"}, "REDPANDA__BOOTSTRAP_SERVERS"),
        ({"TRADESTREAM_REDPANDA__SECURITY_PROTOCOL": "KERBEROS"}, "REDPANDA__SECURITY_PROTOCOL"),
        ({"TRADESTREAM_REDPANDA__SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
        ({"TRADESTREAM_REDIS__URL": "http://x"}, "REDIS__URL"),
        ({"TRADESTREAM_SERVICES__svc__no_such_switch": "1"}, "SERVICES__svc__NO_SUCH_SWITCH"),
        ({"TRADESTREAM_SERVICES__svc__ordering": "sideways"}, "SERVICES__svc__ORDERING"),
        ({"TRADESTREAM_OBSERVABILITY__LOG_LEVEL": "LOUD"}, "OBSERVABILITY__LOG_LEVEL"),
        ({"TRADESTREAM_RELIABILITY__RETRY_MAX_ATTEMPTS": "0"}, "RELIABILITY__RETRY_MAX_ATTEMPTS"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert needle in str(info.value)


def test_secrets_never_show(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRADESTREAM_REDPANDA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__SASL_USERNAME", "svc")
    monkeypatch.setenv("TRADESTREAM_REDPANDA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("TRADESTREAM_REDIS__URL", "redis://:redis-pass-secret@cache:6379/0")
    settings = load_settings()
    logging.getLogger("t").warning("settings %s %r", settings, settings)
    text = repr(settings) + str(settings) + caplog.text + settings.model_dump_json()
    assert "hunter2-secret" not in text and "redis-pass-secret" not in text
    assert settings.redis.safe_address == "cache:6379"
    # A bad value next to a secret: the error names variables, never values.
    monkeypatch.setenv("TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS", "hunter2-secret")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "hunter2-secret" not in str(info.value)


def test_service_names_match_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESTREAM_SERVICES__OrderPricer__concurrency", "3")
    monkeypatch.setenv("TRADESTREAM_SERVICES__OrderPricer__default_concurrency", "4")
    with pytest.raises(SettingsError, match="SERVICES__orderpricer__CONCURRENCY"):
        load_settings()
    monkeypatch.delenv("TRADESTREAM_SERVICES__OrderPricer__concurrency")
    settings = load_settings()
    assert settings.reliability_for("OrderPricer").default_concurrency == 4
    assert settings.reliability_for("order-pricer").default_concurrency == 1


def test_revocation_wait_must_end_well_before_the_rebalance_timeout() -> None:
    from core.config.settings import SettingsError, load_settings

    assert load_settings().reliability.revocation_timeout_s * 2000 <= 30_000
    with pytest.raises(SettingsError) as info:
        load_settings(
            redpanda={"rebalance_timeout_ms": 20_000}, reliability={"revocation_timeout_s": 15}
        )
    assert "REVOCATION_TIMEOUT_S" in str(info.value)
    assert "REBALANCE_TIMEOUT_MS" in str(info.value)
    with pytest.raises(SettingsError) as info:
        load_settings(services={"engine": {"revocation_timeout_s": 16}})
    assert "SERVICES__engine__REVOCATION_TIMEOUT_S" in str(info.value)
