"""No password reaches a log line (at DEBUG, both formats), the health output or /metrics.

``secret_probe`` runs a real service over SASL_SSL (SCRAM-SHA-512 and PLAIN)
with dedup on the ACL Redis, at DEBUG, and prints what the ops endpoint serves;
everything it writes is searched for the Kafka and Redis passwords. The probe
also shows the positive side: aiokafka's DEBUG lines are there, the SASL
exchange happened (its request is named, its bytes hidden), events round-tripped,
and tracebacks keep their text.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from tests.security.conftest import SecureInfra

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def _run_probe(env: dict[str, str], fmt: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.security.secret_probe", fmt, f"sec-{uuid4().hex[:8]}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize(
    ("mechanism", "fmt", "tls_redis"),
    [
        ("SCRAM-SHA-512", "console", False),
        ("SCRAM-SHA-512", "json", True),
        ("PLAIN", "console", True),
    ],
)
def test_debug_logs_health_and_metrics_hold_no_secret(
    secure_infra: SecureInfra, mechanism: str, fmt: str, tls_redis: bool
) -> None:
    env = secure_infra.env(tls_redis=tls_redis)
    env["TRADESTREAM_REDPANDA__SASL_MECHANISM"] = mechanism
    env.pop("PYTHONWARNINGS", None)
    output = _run_probe(env, fmt)
    for secret in [*secure_infra.secrets, "wrong-password-123"]:
        assert secret not in output, f"a secret leaked ({mechanism}, {fmt})"

    # It did what it should, at DEBUG, through the secured servers.
    assert "== handled 5" in output
    assert "== /health/live 200" in output and "== /health/ready 200" in output
    assert "tradestream_messages_handled_total" in output
    assert "Request to 127.0.0.1" in output  # aiokafka's DEBUG request lines are kept
    assert "SaslAuthenticateRequest" in output and "hidden" in output
    assert "authentication failed" in output  # the failed start was logged
    assert "a handler-like failure" in output and "RuntimeError" in output
    assert "Traceback" in output or '"exception"' in output

    # No locals in the traceback: the frame's `password` and `url` are not listed.
    assert "locals" not in output.lower()


def test_plain_sasl_bytes_would_hold_the_password_without_the_filter(
    secure_infra: SecureInfra,
) -> None:
    """What the filter guards against: aiokafka's PLAIN request repr carries the password."""
    import logging

    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    from core.streaming.logging_setup import SaslExchangeFilter

    raw = f"\0{secure_infra.kafka_username}\0{secure_infra.kafka_password}".encode()
    request = SaslAuthenticateRequest_v1(raw)
    assert secure_infra.kafka_password in repr(request)
    record = logging.LogRecord(
        "aiokafka.conn", logging.DEBUG, __file__, 1, "Request %d: %s", (7, request), None
    )
    assert SaslExchangeFilter().filter(record)
    assert secure_infra.kafka_password not in record.getMessage()
    assert "SaslAuthenticateRequest_v1 hidden" in record.getMessage()
