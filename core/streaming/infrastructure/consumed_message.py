"""The message object a ``MessageConsumer`` yields, and how raw bytes become one."""

from __future__ import annotations

from typing import Any

import orjson

from core.streaming.types import FetchedRecord, Headers, Record, TopicPartition


class ConsumedMessage:
    """One fetched record: where it came from, its bytes, and its decoded value.

    ``value`` is the decoded JSON object (the event envelope), or ``None`` when the
    bytes could not be decoded; then ``decode_error`` says why and ``raw_value``
    still holds the bytes untouched, so the message can be dead-lettered. The
    broker client's record is kept as it is (no copy), which keeps the per-message
    cost of consuming low.
    """

    __slots__ = ("claimed_at", "decode_error", "generation", "record", "value")

    def __init__(
        self,
        record: FetchedRecord,
        value: dict[str, Any] | None,
        decode_error: str | None = None,
        generation: int = 0,
    ) -> None:
        self.record = record
        self.value = value
        self.decode_error = decode_error
        self.generation = generation
        self.claimed_at = 0.0  # monotonic time of a batch dedup claim, if one was made

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: dict[str, Any] | None,
        raw_value: bytes | None,
        headers: Headers = (),
        timestamp: int = 0,
        decode_error: str | None = None,
        generation: int = 0,
    ) -> ConsumedMessage:
        """A message from its parts (for tests and tools)."""
        record = Record(topic, partition, offset, key, raw_value, tuple(headers), timestamp)
        return cls(record, value, decode_error, generation)

    @property
    def topic(self) -> str:
        """Topic the record was fetched from."""
        return self.record.topic

    @property
    def partition(self) -> int:
        """Partition the record was fetched from."""
        return self.record.partition

    @property
    def offset(self) -> int:
        """Offset of the record in its partition."""
        return self.record.offset

    @property
    def key(self) -> bytes | None:
        """Key bytes, untouched."""
        return self.record.key

    @property
    def raw_value(self) -> bytes | None:
        """Value bytes, untouched."""
        return self.record.value

    @property
    def headers(self) -> Headers:
        """Record headers, untouched."""
        return self.record.headers

    @property
    def timestamp(self) -> int:
        """Record timestamp in milliseconds since the epoch."""
        return self.record.timestamp

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition this message came from."""
        return TopicPartition(self.record.topic, self.record.partition)

    @property
    def is_decodable(self) -> bool:
        """True when ``value`` holds a decoded JSON object."""
        return self.decode_error is None

    @property
    def key_str(self) -> str | None:
        """The key as text (undecodable bytes replaced), or ``None``."""
        key = self.record.key
        return None if key is None else key.decode("utf-8", "replace")

    @property
    def size(self) -> int:
        """Bytes of key and value, for in-flight byte bounds."""
        record = self.record
        return len(record.value or b"") + len(record.key or b"")

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
        for key, val in self.record.headers:
            if key == name:
                found = val
        return found

    def location(self) -> str:
        """``topic[partition]@offset``, for logs and errors."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def __repr__(self) -> str:
        state = "ok" if self.decode_error is None else f"undecodable: {self.decode_error}"
        return f"ConsumedMessage({self.location()}, {state})"


def decode_record(record: FetchedRecord, generation: int = 0) -> ConsumedMessage:
    """Decode a record's value as a JSON object; never raises on bad bytes."""
    raw = record.value
    if raw is None:
        return ConsumedMessage(record, None, "empty value (tombstone)", generation)
    try:
        decoded = _loads(raw)
    except _JSONDecodeError as exc:
        return ConsumedMessage(record, None, f"not valid UTF-8 JSON: {exc}", generation)
    if type(decoded) is dict:
        return ConsumedMessage(record, decoded, None, generation)
    return ConsumedMessage(
        record, None, f"JSON value is a {type(decoded).__name__}, not an object", generation
    )


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
