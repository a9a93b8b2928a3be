"""Log output: credentials redacted, SASL bytes hidden, no locals, JSON keeps tracebacks.

No servers needed: the records are made here and rendered by the configured
handlers into a captured stderr.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from core.streaming.logging_setup import REDACTED, configure_logging, redact, register_secret

SECRET = "s3cr3t-Pa55word-for-tests"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _fail_with_locals() -> None:
    password = SECRET  # a local a traceback renderer could print
    url = "redis://user:another-secret-value@cache:6379/0"
    raise ValueError(f"cannot connect ({len(password)} chars, {url.split('@')[1]})")


def test_redact_hides_url_credentials_and_registered_secrets() -> None:
    register_secret(SECRET)
    text = f"rediss://trading:hunter22@cache:6380/0 and {SECRET} and redis://:pw1234@h:1/0"
    out = redact(text)
    assert "hunter22" not in out and SECRET not in out and "pw1234" not in out
    assert f"rediss://trading:{REDACTED}@cache:6380/0" in out
    assert f"redis://:{REDACTED}@h:1/0" in out


def test_redact_hides_sasl_auth_bytes() -> None:
    line = "Request 3: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00bob\\x00pa55w0rd!')"
    out = redact(line)
    assert "pa55w0rd" not in out and "SaslAuthenticateRequest_v1" in out


def test_console_tracebacks_have_no_locals(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret(SECRET)
    configure_logging("console", "INFO")
    try:
        _fail_with_locals()
    except ValueError:
        logging.getLogger("app").exception("it failed")
    err = capsys.readouterr().err
    assert "it failed" in err and "ValueError: cannot connect" in err
    assert "_fail_with_locals" in err  # the traceback is there...
    assert SECRET not in err and "another-secret-value" not in err  # ...without locals


def test_json_keeps_stdlib_exception_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    try:
        _fail_with_locals()
    except ValueError:
        logging.getLogger("app").exception("it failed")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "it failed"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "ValueError: cannot connect (25 chars, cache:6379/0)" in record["exception"]
    assert "exc_info" not in record
    assert SECRET not in line


def test_structlog_loggers_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    structlog.get_logger("app").info("connecting", url="redis://u:topsecret99@h:6379/0")
    err = capsys.readouterr().err
    assert "topsecret99" not in err and REDACTED in err


def test_aiokafka_debug_sasl_request_is_hidden_but_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    configure_logging("console", "DEBUG")
    request = SaslAuthenticateRequest_v1(b"\x00trading\x00plain-text-password")
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 9092, 5, request)
    err = capsys.readouterr().err
    assert "Request to h:9092 5" in err and "SaslAuthenticateRequest_v1 hidden" in err
    assert "plain-text-password" not in err


def test_short_values_are_not_registered() -> None:
    register_secret("ab", None, "")
    assert redact("ab cd") == "ab cd"
