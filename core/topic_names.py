"""Kafka's rules for legal topic names, shared by every broker backend and the schemas.

It imports nothing of the project, so `core.schemas` can validate its names without
depending on `core.streaming`.
"""

from __future__ import annotations

import re

MAX_TOPIC_LENGTH = 249
_LEGAL = re.compile(r"^[a-zA-Z0-9._-]+$")


class InvalidTopicNameError(ValueError):
    """A topic name Kafka would refuse."""


def validate_topic_name(name: str) -> str:
    """Return ``name`` if Kafka accepts it as a topic name, else raise."""
    if not name:
        raise InvalidTopicNameError("topic name is empty")
    if name in {".", ".."}:
        raise InvalidTopicNameError(f"topic name {name!r} is reserved")
    if len(name) > MAX_TOPIC_LENGTH:
        raise InvalidTopicNameError(
            f"topic name is {len(name)} characters, the limit is {MAX_TOPIC_LENGTH}"
        )
    if not _LEGAL.match(name):
        raise InvalidTopicNameError(f"topic name {name!r} has characters outside [a-zA-Z0-9._-]")
    return name
