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
from typing import Any

import structlog

from core.schemas.events import generate_uuid7


class TraceContext:
    """What the current task is working on, and on behalf of which chain.

    ``traceparent`` is the W3C trace context for work done here: it continues
    ``parent_traceparent`` (the incoming record's) with a new span id, made on
    first use only, so handling a message that produces nothing costs no ids.
    """

    __slots__ = (
        "_traceparent",
        "causation_id",
        "correlation_id",
        "operation",
        "parent_traceparent",
        "service",
    )

    def __init__(
        self,
        correlation_id: str,
        causation_id: str | None,
        service: str,
        operation: str,
        parent_traceparent: str | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.service = service
        self.operation = operation
        self.parent_traceparent = parent_traceparent
        self._traceparent: str | None = None

    @property
    def traceparent(self) -> str:
        """This work's ``traceparent`` (same trace as the parent, new span id)."""
        if self._traceparent is None:
            self._traceparent = new_traceparent(self.parent_traceparent)
        return self._traceparent

    def renamed(self, operation: str) -> TraceContext:
        """The same context under another operation name."""
        ctx = TraceContext(
            self.correlation_id,
            self.causation_id,
            self.service,
            operation,
            self.parent_traceparent,
        )
        ctx._traceparent = self._traceparent
        return ctx


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


class _Scope:
    """Sets a context on enter and restores the previous one on exit."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: TraceContext) -> None:
        self._ctx = ctx
        self._token: contextvars.Token[TraceContext | None] | None = None

    def __enter__(self) -> TraceContext:
        self._token = _current.set(self._ctx)
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)


class CorrelationContext:
    """Reads and sets the correlation context of the current task."""

    @staticmethod
    def start_new_trace(service: str, operation: str) -> str:
        """Begin a new chain in the current context; returns its correlation id."""
        correlation_id = generate_uuid7()
        _current.set(TraceContext(correlation_id, None, service, operation))
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
        _current.set(TraceContext(correlation_id, causation_id, service, operation, traceparent))

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
    def scope(
        service: str,
        operation: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> _Scope:
        """A ``with`` block in a context, restored after.

        Without a correlation id the chain starts here: the id of the event that
        caused the work (``causation_id``) becomes the correlation id, or a new
        UUIDv7 when there is none.
        """
        return _Scope(
            TraceContext(
                correlation_id or causation_id or generate_uuid7(),
                causation_id,
                service,
                operation,
                traceparent,
            )
        )

    @staticmethod
    @contextmanager
    def operation(name: str) -> Iterator[None]:
        """Rename the operation of the current context for a block."""
        ctx = _current.get()
        token = _current.set(ctx.renamed(name) if ctx else None)
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
