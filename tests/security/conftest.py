"""A SASL_SSL/SCRAM Kafka broker and an ACL/TLS redis-server for the security tests.

Started once per session by ``scripts/secure.sh`` on free loopback ports, in a
state directory of its own, when the suite runs under ``scripts/test.sh``
(``TRADESTREAM_TEST_INFRA``); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from tests.conftest import _free_port, _shared_kafka_libs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "secure.sh"


@dataclass(frozen=True)
class SecureInfra:
    """Where the secured servers listen, their files and credentials."""

    kafka_bootstrap: str
    redis_port: int
    redis_tls_port: int
    directory: Path
    kafka_username: str
    kafka_password: str
    redis_username: str
    redis_password: str

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def other_ca(self) -> str:
        return str(self.directory / "other-ca.pem")

    @property
    def secrets(self) -> list[str]:
        """Every secret a leak check looks for."""
        return [self.kafka_password, self.redis_password]

    def redpanda(self, **overrides: object) -> RedpandaSettings:
        """Client settings for the SASL_SSL listener (SCRAM-SHA-512, private CA)."""
        values: dict[str, object] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": self.kafka_username,
            "sasl_password": SecretStr(self.kafka_password),
            "ssl_cafile": self.ca,
            "connect_timeout_s": 15.0,
        }
        values.update(overrides)
        return RedpandaSettings.model_validate(values)

    def redis_url(self, *, tls: bool = False, password: str | None = None) -> str:
        scheme, port = ("rediss", self.redis_tls_port) if tls else ("redis", self.redis_port)
        secret = self.redis_password if password is None else password
        return f"{scheme}://{self.redis_username}:{secret}@127.0.0.1:{port}/0"

    def redis(self, *, tls: bool = False, **overrides: object) -> RedisSettings:
        values: dict[str, object] = {"url": SecretStr(self.redis_url(tls=tls))}
        if tls:
            values["ssl_cafile"] = self.ca
        values.update(overrides)
        return RedisSettings.model_validate(values)

    def settings(self, *, tls_redis: bool = False) -> Settings:
        return Settings().model_copy(
            update={"redpanda": self.redpanda(), "redis": self.redis(tls=tls_redis)}
        )

    def env(self, *, tls_redis: bool = False) -> dict[str, str]:
        """``TRADESTREAM_*`` variables for a subprocess using these servers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}
        env.update(
            TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            TRADESTREAM_REDPANDA__SECURITY_PROTOCOL="SASL_SSL",
            TRADESTREAM_REDPANDA__SASL_MECHANISM="SCRAM-SHA-512",
            TRADESTREAM_REDPANDA__SASL_USERNAME=self.kafka_username,
            TRADESTREAM_REDPANDA__SASL_PASSWORD=self.kafka_password,
            TRADESTREAM_REDPANDA__SSL_CAFILE=self.ca,
            TRADESTREAM_REDIS__URL=self.redis_url(tls=tls_redis),
        )
        if tls_redis:
            env["TRADESTREAM_REDIS__SSL_CAFILE"] = self.ca
        return env


def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="session")
def secure_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureInfra]:
    if not os.environ.get("TRADESTREAM_TEST_INFRA"):
        pytest.skip("TRADESTREAM_TEST_INFRA is not set; run the suite with `bash scripts/test.sh`")
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.skip("java and openssl are needed for the secured broker")
    state = tmp_path_factory.mktemp("secure")
    ports = [_free_port() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [_free_port() for _ in range(4)]
    env = {
        **os.environ,
        "INFRA_DIR": str(state),
        "SECURE_DIR": str(state / "secure"),
        "SECURE_KAFKA_PORT": str(ports[0]),
        "SECURE_KAFKA_CONTROLLER_PORT": str(ports[1]),
        "SECURE_REDIS_PORT": str(ports[2]),
        "SECURE_REDIS_TLS_PORT": str(ports[3]),
    }
    env.pop("KAFKA_LIBS_DIR", None)
    libs = os.environ.get("KAFKA_LIBS_DIR") or _shared_kafka_libs()
    if libs is not None:
        env["KAFKA_LIBS_DIR"] = str(libs)

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=180
        )

    started = run("start")
    try:
        assert started.returncode == 0, f"secure.sh start failed:\n{started.stderr[-3000:]}"
        creds = _read_env_file(state / "secure" / "credentials.env")
        yield SecureInfra(
            kafka_bootstrap=f"127.0.0.1:{ports[0]}",
            redis_port=ports[2],
            redis_tls_port=ports[3],
            directory=state / "secure",
            kafka_username=creds["KAFKA_SASL_USERNAME"],
            kafka_password=creds["KAFKA_SASL_PASSWORD"],
            redis_username=creds["REDIS_USERNAME"],
            redis_password=creds["REDIS_PASSWORD"],
        )
    finally:
        run("stop")
