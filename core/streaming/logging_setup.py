"""Configure structlog once per process: JSON lines or readable console lines.

Standard-library loggers (aiokafka's among them) are routed through the same
renderer, so every line of a service has one format. Every rendered line, at
every level, passes through redaction: credentials in URLs, the values
registered with :func:`register_secret`, and aiokafka's SASL exchange (its
DEBUG lines print the authentication bytes, the password in them) never reach
the output. Tracebacks carry no local variables unless asked for, since frames
hold client settings and URLs.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

REDACTED = "**********"

# scheme://user:password@host -> scheme://user:**********@host
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:@/\s]*):([^@/\s]+)@")
# What aiokafka prints of a SASL request or response (the auth bytes hold the secret).
_SASL_BYTES = re.compile(r"(sasl_auth_bytes|auth_bytes)=b?(['\"]).*?(?<!\\)\2", re.DOTALL)

_secrets: set[str] = set()


def register_secret(*values: str | None) -> None:
    """Never print these values (passwords, tokens) in any log line from now on.

    Values shorter than 4 characters are ignored: replacing them everywhere
    would mangle ordinary text.
    """
    for value in values:
        if value and len(value) >= 4:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` without URL credentials, registered secrets or SASL exchange bytes."""
    text = _URL_CREDENTIALS.sub(rf"\1:{REDACTED}@", text)
    if "Sasl" in text or "auth_bytes" in text:
        text = _SASL_BYTES.sub(rf"\1={REDACTED}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SaslExchangeFilter(logging.Filter):
    """Replaces SASL request/response objects in log arguments by their type name.

    aiokafka logs every request and response at DEBUG with its ``repr``; for
    ``SaslAuthenticateRequest`` that is the PLAIN password or the SCRAM exchange.
    The record is kept (the fact that authentication happened is useful), the
    bytes are not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_sasl(a) for a in args):
            record.args = tuple(f"<{type(a).__name__} hidden>" if _is_sasl(a) else a for a in args)
        return True


def _is_sasl(value: object) -> bool:
    return type(value).__name__.startswith("Sasl")


def _redact_rendered(_: Any, __: str, rendered: Any) -> Any:
    """Last processor: redact the rendered line (message, fields, traceback)."""
    if isinstance(rendered, str):
        return redact(rendered)
    if isinstance(rendered, bytes):
        return redact(rendered.decode("utf-8", "replace"))
    return rendered


def configure_logging(
    fmt: Literal["json", "console"] = "console",
    level: str = "INFO",
    *,
    show_locals: bool = False,
) -> None:
    """Set the process-wide log format and level.

    ``show_locals`` prints local variables in console tracebacks: for a
    developer's machine only, since they can hold secrets (they are redacted
    only where recognisable).
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        formatter: structlog.typing.ExceptionRenderer = (
            structlog.dev.RichTracebackFormatter(show_locals=True)
            if show_locals
            else structlog.dev.plain_traceback
        )
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=formatter
        )
    # JSON needs the traceback as text in the event; the console renderer formats
    # exc_info itself (with the formatter chosen above).
    exc_processors: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info] if fmt == "json" else []
    )
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SaslExchangeFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_processors,
                renderer,
                _redact_rendered,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka is chatty at INFO (every rebalance step); keep it to warnings unless debugging.
    logging.getLogger("aiokafka").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
