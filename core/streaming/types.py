"""Broker-neutral value types shared by the client surface and the layers above."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

Headers = Sequence[tuple[str, bytes | None]]


class TopicPartition(NamedTuple):
    """One partition of one topic."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """A record as fetched from a broker, bytes untouched."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp: int = 0  # milliseconds since the epoch

    @property
    def topic_partition(self) -> TopicPartition:
        """The partition this record came from."""
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record the client could not decode, standing at its offset so the partition moves on.

    Its key, value and headers are not handed out (they could not be read); the
    original stays readable at ``topic``/``partition``/``offset``. ``client_error``
    says what failed; ``size`` is the record's size in bytes when known.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    client_error: str
    size: int | None = None
    key: None = None
    value: None = None
    headers: Headers = ()


class FetchedRecord(Protocol):
    """What a consumer client hands out per record (Kafka's own record objects fit)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Headers: ...

    @property
    def timestamp(self) -> int: ...


class RecordMetadata(Protocol):
    """Where the broker stored an acknowledged record."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A ``RecordMetadata`` made by a backend other than Kafka."""

    topic: str
    partition: int
    offset: int
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions, replication, extra configs."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)
