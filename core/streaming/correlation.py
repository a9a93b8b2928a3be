"""Correlation context, the correlation step, and a logger that carries the context.

While a handler runs, the current context says which chain of events the work
belongs to (``correlation_id``), which event caused it (``causation_id``), the
service and the operation. Producers read it to stamp outgoing envelopes;
:class:`CorrelationLogger` adds it to every log line.

In a flow, the :class:`CorrelationStep` marks each message of a run, and the
context of the message being handled is built from its envelope only when
something asks for it (a send, a log line): handling a message that produces
nothing costs no ids and no objects. :meth:`CorrelationContext.scope` sets a
context explicitly, for work outside a flow.
"""

from __future__ import annotations

import contextvars
import secrets
from typing import TYPE_CHECKING, Any

import structlog

from core.schemas.events import generate_uuid7
from core.streaming.infrastructure.consumed_message import ConsumedMessage, current_message

if TYPE_CHECKING:
    from core.streaming.reliability.steps import Batch, Next

HEADER_TRACEPARENT = "traceparent"
#: Longest id carried into a context (and so into logs and outgoing envelopes).
MAX_CONTEXT_ID = 200


class TraceContext:
    """What the current task is working on, and on behalf of which chain.

    ``traceparent`` is the W3C trace context for work done here: it continues
    ``parent_traceparent`` (the incoming record's) with a new span id, made on
    first use only.
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
    def current() -> TraceContext | None:
        """The context of the current task: an explicit scope, else the handled message's."""
        ctx = _current.get()
        if ctx is not None:
            return ctx
        message = current_message()
        if message is None or message.correlator is None:
            return None
        if message.trace is None:
            message.trace = message.correlator.context_of(message)
        trace: TraceContext = message.trace
        return trace

    @staticmethod
    def get_correlation_id() -> str | None:
        """Correlation id of the current chain, if any."""
        ctx = CorrelationContext.current()
        return ctx.correlation_id if ctx else None

    @staticmethod
    def get_causation_id() -> str | None:
        """Id of the event being handled, if any."""
        ctx = CorrelationContext.current()
        return ctx.causation_id if ctx else None

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


def _bounded(value: Any) -> str | None:
    if isinstance(value, str) and value and len(value) <= MAX_CONTEXT_ID:
        return value
    return None


class CorrelationStep:
    """Gives each message of a run its correlation context (built on first use)."""

    def __init__(self, service_name: str, operation: str) -> None:
        self.service_name = service_name
        self.operation = operation

    async def __call__(self, batch: Batch, call_next: Next) -> None:
        for message in batch:
            message.correlator = self
        await call_next(batch)

    def context_of(self, message: ConsumedMessage) -> TraceContext:
        """The context of handling ``message``: its chain, caused by its event."""
        value = message.value or {}
        causation_id = _bounded(message.event_id)
        header = message.header(HEADER_TRACEPARENT)
        traceparent = header.decode("ascii", "replace")[:128] if header else None
        return TraceContext(
            _bounded(value.get("correlation_id")) or causation_id or generate_uuid7(),
            causation_id,
            self.service_name,
            self.operation,
            traceparent,
        )


class CorrelationLogger:
    """Structured logger whose lines carry the correlation fields automatically."""

    def __init__(self, service_name: str, logger_name: str = "tradestream") -> None:
        self.service_name = service_name
        self._log = structlog.get_logger(logger_name)

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        ctx = CorrelationContext.current()
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
