"""Permanent connection errors end the start at once, with the cause and without the secret.

Against the SASL_SSL/SCRAM broker and the ACL/TLS redis-server of
``scripts/secure.sh``. Each case has a generous connect timeout (30 s): a start
that retried a permanent error would take that long, so finishing within a few
seconds proves it was not retried.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, Settings
from core.streaming.errors import (
    BrokerAccessError,
    BrokerUnavailableError,
    ConnectionSetupError,
    RedisAccessError,
)
from core.streaming.infrastructure.connection_manager import ConnectionManager
from tests.security.conftest import SecureInfra

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

FAST_S = 8.0  # "within a few seconds", with room for a loaded 2-core machine
PATIENT_S = 30.0


async def _start_error(
    settings: Settings, *, use_redis: bool
) -> tuple[ConnectionSetupError, float]:
    manager = ConnectionManager(settings, use_redis=use_redis)
    began = time.monotonic()
    try:
        with pytest.raises(ConnectionSetupError) as caught:
            await manager.start()
    finally:
        await manager.stop()
    return caught.value, time.monotonic() - began


def _kafka_only(infra: SecureInfra, **overrides: object) -> Settings:
    overrides.setdefault("connect_timeout_s", PATIENT_S)
    return Settings().model_copy(update={"redpanda": infra.redpanda(**overrides)})


def _assert_no_secret(infra: SecureInfra, error: BaseException) -> None:
    text = f"{error!s} {error!r}"
    for secret in [*infra.secrets, "wrong-password-123"]:
        assert secret not in text


async def test_a_good_configuration_connects(secure_infra: SecureInfra) -> None:
    manager = ConnectionManager(secure_infra.settings(), use_redis=True)
    await manager.start()
    try:
        health = await manager.health()
        assert health == {"running": True, "kafka": "ok", "redis": "ok", "healthy": True}
    finally:
        await manager.stop()


async def test_wrong_kafka_password_fails_fast_naming_authentication(
    secure_infra: SecureInfra,
) -> None:
    settings = _kafka_only(secure_infra, sasl_password=SecretStr("wrong-password-123"))
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerAccessError)
    assert took < FAST_S, f"took {took:.1f} s"
    assert "authentication failed" in str(error)
    assert "SaslAuthenticationFailed" in str(error)
    assert secure_infra.kafka_bootstrap in str(error)
    _assert_no_secret(secure_infra, error)


async def test_unsupported_sasl_mechanism_fails_fast(secure_infra: SecureInfra) -> None:
    settings = _kafka_only(secure_infra, sasl_mechanism="SCRAM-SHA-256")
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerAccessError)
    assert took < FAST_S
    assert "authentication failed" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_wrong_ca_fails_fast_naming_certificate_verification(
    secure_infra: SecureInfra,
) -> None:
    settings = _kafka_only(secure_infra, ssl_cafile=secure_infra.other_ca)
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerAccessError)
    assert took < FAST_S
    assert "certificate verification failed" in str(error)
    assert "TRADESTREAM_REDPANDA__SSL_CAFILE" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_missing_ca_file_names_the_variable_and_path(
    secure_infra: SecureInfra, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    error, took = await _start_error(
        _kafka_only(secure_infra, ssl_cafile=str(missing)), use_redis=False
    )
    assert isinstance(error, BrokerAccessError)
    assert took < 1.0
    assert "TRADESTREAM_REDPANDA__SSL_CAFILE" in str(error) and str(missing) in str(error)


async def test_plaintext_client_on_the_tls_port_is_told_to_use_tls(
    secure_infra: SecureInfra,
) -> None:
    settings = _kafka_only(
        secure_infra,
        security_protocol="PLAINTEXT",
        sasl_mechanism=None,
        sasl_username=None,
        sasl_password=None,
    )
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerAccessError)
    assert took < FAST_S
    assert "expects TLS" in str(error) and "SASL_SSL" in str(error)


async def test_tls_client_on_a_plaintext_port_is_told_it_is_plaintext(
    secure_infra: SecureInfra, kafka_bootstrap: str
) -> None:
    settings = _kafka_only(secure_infra, bootstrap_servers=kafka_bootstrap, security_protocol="SSL")
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerAccessError)
    assert took < FAST_S
    assert "plaintext listener" in str(error)


async def test_a_closed_port_is_still_retried_until_the_timeout(secure_infra: SecureInfra) -> None:
    from tests.conftest import _free_port

    settings = _kafka_only(
        secure_infra, bootstrap_servers=f"127.0.0.1:{_free_port()}", connect_timeout_s=3.0
    )
    error, took = await _start_error(settings, use_redis=False)
    assert isinstance(error, BrokerUnavailableError)
    assert 3.0 <= took < 12.0
    assert "after 3 s" in str(error) and "ConnectionRefusedError" in str(error)


# --------------------------------------------------------------------------- Redis


def _with_redis(infra: SecureInfra, redis: RedisSettings) -> Settings:
    redis = redis.model_copy(update={"connect_timeout_s": PATIENT_S})
    return Settings().model_copy(update={"redpanda": infra.redpanda(), "redis": redis})


async def test_wrong_redis_password_fails_fast(secure_infra: SecureInfra) -> None:
    url = secure_infra.redis_url(password="wrong-password-123")
    error, took = await _start_error(
        _with_redis(secure_infra, RedisSettings(url=SecretStr(url))), use_redis=True
    )
    assert isinstance(error, RedisAccessError)
    assert took < FAST_S
    assert "authentication failed" in str(error)
    assert f"127.0.0.1:{secure_infra.redis_port}" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_redis_without_credentials_is_told_authentication_is_required(
    secure_infra: SecureInfra,
) -> None:
    url = f"redis://127.0.0.1:{secure_infra.redis_port}/0"
    error, took = await _start_error(
        _with_redis(secure_infra, RedisSettings(url=SecretStr(url))), use_redis=True
    )
    assert isinstance(error, RedisAccessError)
    assert took < FAST_S
    assert "authentication failed" in str(error)


async def test_plaintext_redis_client_on_the_tls_port_is_told_to_use_rediss(
    secure_infra: SecureInfra,
) -> None:
    url = (
        f"redis://{secure_infra.redis_username}:{secure_infra.redis_password}"
        f"@127.0.0.1:{secure_infra.redis_tls_port}/0"
    )
    error, took = await _start_error(
        _with_redis(secure_infra, RedisSettings(url=SecretStr(url))), use_redis=True
    )
    assert isinstance(error, RedisAccessError)
    assert took < FAST_S
    assert "expects TLS" in str(error) and "rediss://" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_redis_tls_without_the_private_ca_names_certificate_verification(
    secure_infra: SecureInfra,
) -> None:
    url = secure_infra.redis_url(tls=True)
    error, took = await _start_error(
        _with_redis(secure_infra, RedisSettings(url=SecretStr(url))), use_redis=True
    )
    assert isinstance(error, RedisAccessError)
    assert took < FAST_S
    assert "certificate verification failed" in str(error)
    assert "TRADESTREAM_REDIS__SSL_CAFILE" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_tls_redis_client_on_the_plaintext_port_is_told_it_is_plaintext(
    secure_infra: SecureInfra,
) -> None:
    url = (
        f"rediss://{secure_infra.redis_username}:{secure_infra.redis_password}"
        f"@127.0.0.1:{secure_infra.redis_port}/0?ssl_cert_reqs=none"
    )
    error, took = await _start_error(
        _with_redis(secure_infra, RedisSettings(url=SecretStr(url))), use_redis=True
    )
    assert isinstance(error, RedisAccessError)
    assert took < FAST_S
    assert "does not speak TLS" in str(error)
    _assert_no_secret(secure_infra, error)


async def test_missing_redis_ca_file_names_the_variable_and_path(
    secure_infra: SecureInfra, tmp_path: Path
) -> None:
    missing = tmp_path / "ca.pem"
    redis = RedisSettings(url=SecretStr(secure_infra.redis_url(tls=True)), ssl_cafile=str(missing))
    error, took = await _start_error(_with_redis(secure_infra, redis), use_redis=True)
    assert isinstance(error, RedisAccessError)
    assert took < 1.0
    assert "TRADESTREAM_REDIS__SSL_CAFILE" in str(error) and str(missing) in str(error)
