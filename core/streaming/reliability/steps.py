"""The step contract: cross-cutting work around a flow's handler, composed per flow.

A *step* is an async callable ``step(batch, call_next)``. ``batch`` is a run of
messages from one lane, in order; the step does its work before and after
``await call_next(batch)`` (or calls it with a part of the batch, or more than
once). The innermost callable is the :class:`HandlerInvoker`, which runs the
handler on each message and records its :class:`Outcome`. The builder composes
the chain per flow from the features that are on; a feature that is off is
simply absent. A user step looks like this::

    class RequireTenant:
        async def __call__(self, batch: Batch, call_next: Next) -> None:
            for message in batch:
                if message.value and "tenant" not in message.value.get("data", {}):
                    reject(message, PermanentError("no tenant"))  # dead-lettered
            await call_next(batch)

A step may also offer ``message_scope(message)``, a context manager the invoker
enters around each handler call of that flow (tracing spans use it).

Working per run instead of per message is what keeps the hot path cheap: each
step is one coroutine per run, and the per-message work left is the handler call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from core.streaming.errors import DecodeError, RetryableError
from core.streaming.infrastructure.consumed_message import (
    HANDLING,
    ConsumedMessage,
    Outcome,
    reset_current_message,
    set_current_message,
)

Batch = list[ConsumedMessage]
Next = Callable[[Batch], Awaitable[None]]
Handler = Callable[[dict[str, Any]], Awaitable[None]]
BatchHandler = Callable[[list[dict[str, Any]]], Awaitable[None]]


@runtime_checkable
class Step(Protocol):
    """One cross-cutting concern around the handler."""

    async def __call__(self, batch: Batch, call_next: Next) -> None: ...


class HandlerTimeoutError(RetryableError):
    """A handler attempt ran past the flow's ``handler_timeout_s``."""


class HandlerCancelledError(RetryableError):
    """A handler raised ``CancelledError`` (or another ``BaseException``) by itself."""


class BatchItemsFailed(Exception):
    """Raised by a batch handler to fail some of its events: ``{index: error}``.

    The other events of the batch count as handled.
    """

    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__(f"{len(failures)} event(s) of the batch failed")
        self.failures = failures


def reject(message: ConsumedMessage, error: BaseException) -> None:
    """Fail ``message`` from a step (the error path retries or dead-letters it)."""
    message.outcome = Outcome.FAILED
    message.error = error


def pending(batch: Batch) -> Batch:
    """The messages of ``batch`` that have not run yet."""
    return [m for m in batch if m.outcome is None]


def compose(steps: Sequence[Step], terminal: Next) -> Next:
    """The chain ``steps[0] -> steps[1] -> ... -> terminal`` as one callable."""
    chain = terminal
    for step in reversed(steps):
        chain = _link(step, chain)
    return chain


def _link(step: Step, call_next: Next) -> Next:
    async def run(batch: Batch) -> None:
        await step(batch, call_next)

    return run


class HandlerInvoker:
    """Runs the handler on each message of a run, in order, until one fails.

    Messages after a failed one are left unrun (no outcome), so the error path
    settles the failure before later messages of the same lane run: per-lane
    order holds even through retries. A message that already has an outcome
    (a duplicate, a rejected one) is skipped.

    ``should_stop`` is checked between messages: at shutdown and on revocation
    the rest of a run stays unrun and uncommitted. Only a cancellation of the
    lane itself (``task.cancelling()``) is passed on; ``CancelledError`` and any
    other ``BaseException`` a handler raises by itself is a failure of its
    message, except ``KeyboardInterrupt`` and ``SystemExit``.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        handler_timeout_s: float | None = None,
        scopes: Sequence[Callable[[ConsumedMessage], AbstractContextManager[Any]]] = (),
        should_stop: Callable[[ConsumedMessage], bool] | None = None,
    ) -> None:
        self.handler = handler
        self.handler_timeout_s = handler_timeout_s
        self.scopes = list(scopes)
        self.should_stop = should_stop
        #: Set while ``should_stop`` may say yes (stopping, revoking): checked per
        #: message only then, so the usual run pays one attribute read.
        self.halting = False
        #: What each lane task is running now, and since when (monotonic).
        self.running: dict[asyncio.Task[Any], list[Any]] = {}

    async def __call__(self, batch: Batch) -> None:
        task = asyncio.current_task()
        assert task is not None
        now = time.monotonic
        simple = not self.scopes and self.handler_timeout_s is None
        handler = self.handler
        set_message, reset_message = HANDLING.set, HANDLING.reset
        handled = Outcome.HANDLED
        started = now()
        slot: list[Any] = [None, started]
        self.running[task] = slot
        try:
            for message in batch:
                if message.outcome is not None:
                    continue
                if self.halting and self.should_stop is not None and self.should_stop(message):
                    return
                value = message.value
                message.attempts += 1
                if value is None:
                    reject(message, DecodeError(message.decode_error or "undecodable"))
                    return
                token = set_message(message)
                slot[0] = message
                slot[1] = started
                try:
                    if simple:
                        await handler(value)
                    else:
                        await self._call(message, value)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) and task.cancelling():
                        raise  # the lane is being cancelled: shutdown or revocation
                    message.duration = now() - started
                    reject(message, _as_failure(exc, self.handler_timeout_s))
                    return
                finally:
                    reset_message(token)
                # One clock read per message: this one's end is the next one's start.
                ended = now()
                message.duration = ended - started
                message.outcome = handled
                started = ended
        finally:
            del self.running[task]

    async def _call(self, message: ConsumedMessage, value: dict[str, Any]) -> None:
        if not self.scopes:
            async with asyncio.timeout(self.handler_timeout_s):
                await self.handler(value)
            return
        with _Scopes(self.scopes, message):
            if self.handler_timeout_s is None:
                await self.handler(value)
            else:
                async with asyncio.timeout(self.handler_timeout_s):
                    await self.handler(value)

    def overdue(self, limit_s: float) -> int:
        """How many handlers have been running for longer than ``limit_s``."""
        now = time.monotonic()
        return sum(
            1 for message, started in self.running.values() if message and now - started > limit_s
        )


class BatchHandlerInvoker(HandlerInvoker):
    """Runs a batch handler once per run with every runnable event of it.

    The handler raising fails every event of the run with that error, except
    :class:`BatchItemsFailed`, which fails only the events it names.
    """

    def __init__(self, batch_handler: BatchHandler, **options: Any) -> None:
        super().__init__(_unused_handler, **options)
        self.batch_handler = batch_handler

    async def __call__(self, batch: Batch) -> None:
        task = asyncio.current_task()
        assert task is not None
        runnable: Batch = []
        for message in batch:
            if message.outcome is not None:
                continue
            if self.should_stop is not None and self.should_stop(message):
                break
            if message.value is None:
                message.attempts += 1
                reject(message, DecodeError(message.decode_error or "undecodable"))
                continue
            runnable.append(message)
        if not runnable:
            return
        values = [m.value for m in runnable]
        started = time.monotonic()
        self.running[task] = [runnable[0], started]
        for message in runnable:
            message.attempts += 1
        token = set_current_message(runnable[0])
        try:
            if self.handler_timeout_s is None:
                await self.batch_handler(values)  # type: ignore[arg-type]
            else:
                async with asyncio.timeout(self.handler_timeout_s):
                    await self.batch_handler(values)  # type: ignore[arg-type]
        except (KeyboardInterrupt, SystemExit):
            raise
        except BatchItemsFailed as failed:
            for i, message in enumerate(runnable):
                error = failed.failures.get(i)
                if error is None:
                    message.outcome = Outcome.HANDLED
                else:
                    reject(message, error)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and task.cancelling():
                raise
            error = _as_failure(exc, self.handler_timeout_s)
            for message in runnable:
                reject(message, error)
        else:
            for message in runnable:
                message.outcome = Outcome.HANDLED
        finally:
            self.running.pop(task, None)
            reset_current_message(token)
            # The batch's sends belong to all its events: the first one carries them.
            outputs = runnable[0].outputs
            for message in runnable[1:]:
                message.outputs = outputs
            elapsed = (time.monotonic() - started) / len(runnable)
            for message in runnable:
                message.duration = elapsed


async def _unused_handler(value: dict[str, Any]) -> None:  # pragma: no cover - never called
    raise RuntimeError("a batch flow has no per-event handler")


def _as_failure(exc: BaseException, timeout_s: float | None) -> BaseException:
    """The error a failed attempt is recorded with."""
    if (
        isinstance(exc, TimeoutError)
        and timeout_s is not None
        and isinstance(exc.__cause__, asyncio.CancelledError)
    ):
        return HandlerTimeoutError(f"handler ran past its {timeout_s:g} s timeout")
    if isinstance(exc, Exception):
        return exc
    error = HandlerCancelledError(f"handler raised {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class _Scopes:
    """Enters a flow's per-message context managers around one handler call."""

    __slots__ = ("_entered", "_factories", "_message")

    def __init__(
        self,
        factories: list[Callable[[ConsumedMessage], AbstractContextManager[Any]]],
        message: ConsumedMessage,
    ) -> None:
        self._factories = factories
        self._message = message
        self._entered: list[AbstractContextManager[Any]] = []

    def __enter__(self) -> None:
        for factory in self._factories:
            scope = factory(self._message)
            scope.__enter__()
            self._entered.append(scope)

    def __exit__(self, *exc: Any) -> None:
        while self._entered:
            self._entered.pop().__exit__(*exc)
