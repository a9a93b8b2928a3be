"""Partition logs of the embedded broker: append-only record lists with bounded retention."""

from __future__ import annotations

from collections.abc import Sequence

from core.streaming.types import Headers, Record

#: Size of a record batch header (``DefaultRecordBatch``), as aiokafka counts it.
BATCH_HEADER_BYTES = 61
#: Upper bound of the per-record framing (length, attributes, deltas), as aiokafka counts it.
MAX_RECORD_OVERHEAD = 21

#: Trimmed records are physically removed once this many have piled up at the head.
_COMPACT_AFTER = 1024


def _varint_size(value: int) -> int:
    zigzag = (value << 1) ^ (value >> 63)
    size = 1
    while zigzag > 0x7F:
        zigzag >>= 7
        size += 1
    return size


def _fields_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Bytes of a record's key, value and headers, length prefixes included."""
    size = 1 if key is None else _varint_size(len(key)) + len(key)
    size += 1 if value is None else _varint_size(len(value)) + len(value)
    size += _varint_size(len(headers))
    for name, data in headers:
        encoded = len(name.encode("utf-8"))
        size += _varint_size(encoded) + encoded
        size += 1 if data is None else _varint_size(len(data)) + len(data)
    return size


def estimate_record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Serialized size of a one-record batch, computed exactly as aiokafka's producer does.

    Using the same estimate makes ``max_request_size`` refuse the same records on
    both backends.
    """
    return BATCH_HEADER_BYTES + MAX_RECORD_OVERHEAD + _fields_size(key, value, headers)


def record_batch_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Exact size of a one-record, uncompressed v2 batch holding this record.

    It is what a broker compares with ``message.max.bytes`` / ``max.message.bytes``
    (a batch of one record: timestamp and offset deltas are 0, one byte each).
    """
    body = 3 + _fields_size(key, value, headers)  # attributes, timestamp and offset deltas
    return BATCH_HEADER_BYTES + _varint_size(body) + body


class PartitionLog:
    """The records of one partition, addressed by offset.

    With ``retention_records`` set, the oldest records are dropped once the partition
    holds more than that many; the log start offset then moves forward, as Kafka's
    retention does.
    """

    __slots__ = ("_base", "_head", "_records", "partition", "retention_records", "topic")

    def __init__(self, topic: str, partition: int, retention_records: int | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.retention_records = retention_records
        self._records: list[Record] = []
        self._base = 0  # offset of self._records[0]
        self._head = 0  # index of the first record still retained

    @property
    def start_offset(self) -> int:
        """Offset of the oldest retained record (the log start offset)."""
        return self._base + self._head

    @property
    def end_offset(self) -> int:
        """Offset the next appended record gets (the high watermark)."""
        return self._base + len(self._records)

    def __len__(self) -> int:
        return len(self._records) - self._head

    def append(
        self, key: bytes | None, value: bytes | None, headers: Headers, timestamp: int
    ) -> Record:
        """Store one record at the end of the log and return it with its offset.

        The value is stored as a copy of exactly its size: orjson returns bytes
        inside a 4 KB buffer it does not shrink, which retained for every record
        would cost ~10x the data.
        """
        if value is not None:
            value = bytes(memoryview(value))
        record = Record(
            self.topic, self.partition, self.end_offset, key, value, tuple(headers), timestamp
        )
        self._records.append(record)
        if self.retention_records is not None and len(self) > self.retention_records:
            self._trim(len(self) - self.retention_records)
        return record

    def read(self, offset: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records from ``offset`` on (empty at or past the end).

        ``offset`` must not be below ``start_offset``.
        """
        index = offset - self._base
        return self._records[index : index + max_records]

    def retained(self) -> Sequence[Record]:
        """Every retained record, oldest first."""
        return self._records[self._head :]

    def _trim(self, count: int) -> None:
        self._head += count
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._records):
            del self._records[: self._head]
            self._base += self._head
            self._head = 0
