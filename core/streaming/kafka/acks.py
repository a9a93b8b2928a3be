"""The broker's "record too large" refusal, on a send's acknowledgement, in our terms.

aiokafka fails the acknowledgement of a record the broker refused as larger than
the topic's ``max.message.bytes`` with its own ``MessageSizeTooLargeError``; the
layers above (the dead-letter fallback to compact headers among them) expect the
framework's ``MessageTooLargeError``, which the embedded broker raises.

Relaying every acknowledgement through a future of our own would cost each send a
few microseconds. Instead, producers started by the adapter inside
:func:`translated_refusals` have their failed batches' error translated where
aiokafka sets it on the acknowledgements (``MessageBatch.failure``): nothing runs
for a send that succeeds, and producers made outside the adapter are left untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import MessageBatch

from core.streaming.errors import MessageTooLargeError

_translating: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tradestream_translated_refusals", default=False
)
_ORIGINAL_FAILURE: Callable[..., Any] = MessageBatch.failure


@contextlib.contextmanager
def translated_refusals() -> Iterator[None]:
    """Producers started inside this block get ``MessageTooLargeError`` on their acks.

    aiokafka's sender task is created when the producer starts and keeps the
    context of that moment; batches fail inside it.
    """
    token = _translating.set(True)
    try:
        yield
    finally:
        _translating.reset(token)


def translate(error: BaseException, topic: str) -> BaseException:
    """``error`` as the framework raises it (only a size refusal changes)."""
    if not isinstance(error, MessageSizeTooLargeError):
        return error
    # aiokafka copies the error onto each acknowledgement, which drops __cause__:
    # the message names the original.
    return MessageTooLargeError(
        f"the broker refused a record for {topic} as larger than the topic's "
        f"max.message.bytes ({type(error).__name__}: {error}); nothing was stored"
    )


def _failure(batch: Any, exception: BaseException) -> Any:
    if _translating.get():
        exception = translate(exception, batch.tp.topic)
    return _ORIGINAL_FAILURE(batch, exception)


def installed() -> bool:
    """True when aiokafka's batches translate refusals for the adapter's producers."""
    return MessageBatch.failure is _failure


def install() -> None:
    """Wrap ``MessageBatch.failure`` (idempotent)."""
    MessageBatch.failure = _failure
