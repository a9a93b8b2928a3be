"""The message object a ``MessageConsumer`` yields, and how raw bytes become one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from core.streaming.types import FetchedRecord, Headers, TopicPartition


@dataclass(slots=True)
class ConsumedMessage:
    """One fetched record: where it came from, its bytes, and its decoded value.

    ``value`` is the decoded JSON object (the event envelope), or ``None`` when the
    bytes could not be decoded; then ``decode_error`` says why and ``raw_value``
    still holds the bytes untouched, so the message can be dead-lettered.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any] | None
    raw_value: bytes | None
    headers: Headers
    timestamp: int
    decode_error: str | None = None
    generation: int = 0

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition this message came from."""
        return TopicPartition(self.topic, self.partition)

    @property
    def is_decodable(self) -> bool:
        """True when ``value`` holds a decoded JSON object."""
        return self.decode_error is None

    @property
    def key_str(self) -> str | None:
        """The key as text (undecodable bytes replaced), or ``None``."""
        return None if self.key is None else self.key.decode("utf-8", "replace")

    @property
    def size(self) -> int:
        """Bytes of key and value, for in-flight byte bounds."""
        return len(self.raw_value or b"") + len(self.key or b"")

    @property
    def event_id(self) -> str | None:
        """The envelope's ``id``, if the value is an envelope with one."""
        if self.value is None:
            return None
        event_id = self.value.get("id")
        return event_id if isinstance(event_id, str) and event_id else None

    def header(self, name: str) -> bytes | None:
        """The last header called ``name``, or ``None``."""
        found = None
        for key, val in self.headers:
            if key == name:
                found = val
        return found

    def location(self) -> str:
        """``topic[partition]@offset``, for logs and errors."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode_record(record: FetchedRecord, generation: int = 0) -> ConsumedMessage:
    """Decode a record's value as a JSON object; never raises on bad bytes."""
    raw = record.value
    if raw is not None:
        try:
            decoded = _loads(raw)
        except _JSONDecodeError as exc:
            error = f"not valid UTF-8 JSON: {exc}"
        else:
            if type(decoded) is dict:
                return ConsumedMessage(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    decoded,
                    raw,
                    record.headers,
                    record.timestamp,
                    None,
                    generation,
                )
            error = f"JSON value is a {type(decoded).__name__}, not an object"
    else:
        error = "empty value (tombstone)"
    return ConsumedMessage(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        None,
        raw,
        record.headers,
        record.timestamp,
        error,
        generation,
    )


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
