"""What a trading handler accepts: an event envelope of the expected type, or nothing.

The framework hands a handler any JSON object it decoded. A value on a trading
topic that is not an envelope, or an envelope of another type, is a poison
message: :func:`require_event` raises :class:`PermanentError` saying what is
wrong, so the record is dead-lettered (with a log line and a metric) instead of
being dropped in silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.streaming.errors import PermanentError

_TEXT_FIELDS = ("id", "type", "source")
_MAX_SHOWN = 80


def envelope_problem(message: Mapping[str, Any], *, data_object: bool = True) -> str | None:
    """Why ``message`` is not an event envelope, or None when it is one.

    ``data_object=False`` accepts any ``data`` (present), for handlers that
    reject a malformed payload as business input themselves.
    """
    missing = [
        name
        for name in _TEXT_FIELDS
        if not isinstance(message.get(name), str) or not message.get(name)
    ]
    if missing:
        return f"missing or empty {', '.join(missing)}"
    if "data" not in message:
        return "no data"
    if data_object and not isinstance(message.get("data"), dict):
        return "data is not an object"
    return None


def require_event(
    message: Mapping[str, Any], expected: str, topic: str, *, data_object: bool = True
) -> Any:
    """The payload (``data``) of ``message`` if it is an envelope of type ``expected``.

    Raises :class:`PermanentError` otherwise, naming the topic and the problem.
    The payload is a dict unless ``data_object=False``.
    """
    problem = envelope_problem(message, data_object=data_object)
    if problem is not None:
        fields = ", ".join(sorted(str(k) for k in message))[:_MAX_SHOWN]
        raise PermanentError(f"not an event envelope on {topic} ({problem}; fields: {fields})")
    kind = str(message["type"])
    if kind != expected:
        raise PermanentError(
            f"unexpected event type {kind[:_MAX_SHOWN]!r} on {topic}; expected {expected!r}"
        )
    return message["data"]
