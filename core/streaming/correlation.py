"""Correlation context on contextvars, and a logger that carries it.

Every handled message runs inside a :meth:`CorrelationContext.scope`: the
correlation id of the chain it belongs to, the id of the event that caused the
current work (``causation_id``), the service and the operation. Producers read
the context to stamp outgoing envelopes; :class:`CorrelationLogger` adds it to
every log line. The scope is reset when the message is done, so nothing leaks
into the next one.
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import structlog

from core.schemas.events import generate_uuid7


@dataclass(frozen=True, slots=True)
class TraceContext:
    """What the current task is working on, and on behalf of which chain."""

    correlation_id: str
    causation_id: str | None
    service: str
    operation: str
    traceparent: str | None = None


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "tradestream_trace", default=None
)


def new_traceparent(parent: str | None = None) -> str:
    """A W3C ``traceparent`` continuing ``parent``'s trace with a new span id."""
    trace_id = None
    if parent:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            trace_id = parts[1]
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class CorrelationContext:
    """Reads and sets the correlation context of the current task."""

    @staticmethod
    def start_new_trace(service: str, operation: str) -> str:
        """Begin a new chain in the current context; returns its correlation id."""
        correlation_id = generate_uuid7()
        _current.set(TraceContext(correlation_id, None, service, operation, new_traceparent()))
        return correlation_id

    @staticmethod
    def continue_trace(
        correlation_id: str,
        causation_id: str | None,
        service: str,
        operation: str,
        traceparent: str | None = None,
    ) -> None:
        """Join an existing chain: work caused by event ``causation_id``."""
        _current.set(
            TraceContext(
                correlation_id, causation_id, service, operation, new_traceparent(traceparent)
            )
        )

    @staticmethod
    def current() -> TraceContext | None:
        """The context of the current task, if any."""
        return _current.get()

    @staticmethod
    def get_correlation_id() -> str | None:
        """Correlation id of the current chain, if any."""
        ctx = _current.get()
        return ctx.correlation_id if ctx else None

    @staticmethod
    def get_causation_id() -> str | None:
        """Id of the event being handled, if any."""
        ctx = _current.get()
        return ctx.causation_id if ctx else None

    @staticmethod
    def clear() -> None:
        """Forget the current context."""
        _current.set(None)

    @staticmethod
    @contextmanager
    def scope(
        service: str,
        operation: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Iterator[TraceContext]:
        """Run a block in a context (a new chain if no correlation id); restore after."""
        ctx = TraceContext(
            correlation_id or generate_uuid7(),
            causation_id,
            service,
            operation,
            new_traceparent(traceparent),
        )
        token = _current.set(ctx)
        try:
            yield ctx
        finally:
            _current.reset(token)

    @staticmethod
    @contextmanager
    def operation(name: str) -> Iterator[None]:
        """Rename the operation of the current context for a block."""
        ctx = _current.get()
        token = _current.set(replace(ctx, operation=name) if ctx else None)
        try:
            yield
        finally:
            _current.reset(token)


class CorrelationLogger:
    """Structured logger whose lines carry the correlation fields automatically."""

    def __init__(self, service_name: str, logger_name: str = "tradestream") -> None:
        self.service_name = service_name
        self._log = structlog.get_logger(logger_name)

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        ctx = _current.get()
        base: dict[str, Any] = {"service": self.service_name}
        if ctx is not None:
            base["correlation_id"] = ctx.correlation_id
            base["causation_id"] = ctx.causation_id
            base["operation"] = ctx.operation
        base.update(fields)
        return base

    def debug(self, message: str, **fields: Any) -> None:
        """Log at debug level."""
        self._log.debug(message, **self._fields(fields))

    def info(self, message: str, **fields: Any) -> None:
        """Log at info level."""
        self._log.info(message, **self._fields(fields))

    def warning(self, message: str, **fields: Any) -> None:
        """Log at warning level."""
        self._log.warning(message, **self._fields(fields))

    def error(self, message: str, **fields: Any) -> None:
        """Log at error level."""
        self._log.error(message, **self._fields(fields))

    def exception(self, message: str, **fields: Any) -> None:
        """Log at error level with the current exception's traceback."""
        self._log.error(message, exc_info=True, **self._fields(fields))
