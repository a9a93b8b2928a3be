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


class PartitionTxnState:
    """What a partition log knows of transactions: open ones, aborted records, markers."""

    __slots__ = ("aborted", "control", "open_first")

    def __init__(self) -> None:
        self.open_first: dict[str, int] = {}  # transactional id -> its first offset here
        self.aborted: set[int] = set()
        self.control: set[int] = set()

    def last_stable_offset(self, end_offset: int) -> int:
        """The first offset a ``read_committed`` consumer may not read yet."""
        return min(self.open_first.values(), default=end_offset)

    def visible(self, offset: int, committed: bool) -> bool:
        """Whether the record at ``offset`` is handed to a consumer of this isolation."""
        if offset in self.control:
            return False
        return not (committed and offset in self.aborted)

    def prune(self, start_offset: int) -> None:
        """Forget offsets retention removed."""
        self.aborted = {o for o in self.aborted if o >= start_offset}
        self.control = {o for o in self.control if o >= start_offset}


class PartitionLog:
    """The records of one partition, addressed by offset.

    With ``retention_records`` set, the oldest records are dropped once the partition
    holds more than that many; the log start offset then moves forward, as Kafka's
    retention does.
    """

    __slots__ = ("_base", "_head", "_records", "partition", "retention_records", "topic", "txn")

    def __init__(self, topic: str, partition: int, retention_records: int | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.retention_records = retention_records
        self._records: list[Record] = []
        self._base = 0  # offset of self._records[0]
        self._head = 0  # index of the first record still retained
        #: Transaction state, made on the first transactional write (None: plain log).
        self.txn: PartitionTxnState | None = None

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

    def read_visible(
        self, offset: int, max_records: int, committed: bool
    ) -> tuple[list[Record], int]:
        """Up to ``max_records`` records a consumer may see from ``offset``, and its next position.

        Control markers (and, for ``committed`` reads, aborted records) are stepped
        over; a committed read stops at the last stable offset.
        """
        state = self.txn
        if state is None:
            batch = self.read(offset, max_records)
            return batch, offset + len(batch)
        end = state.last_stable_offset(self.end_offset) if committed else self.end_offset
        out: list[Record] = []
        position = offset
        while position < end and len(out) < max_records:
            chunk = self.read(position, min(max_records, end - position))
            if not chunk:
                break
            for record in chunk:
                if len(out) == max_records:
                    break
                position = record.offset + 1
                if state.visible(record.offset, committed):
                    out.append(record)
        return out, position

    def stable_end(self) -> int:
        """The last stable offset: where a ``read_committed`` consumer's end is."""
        state = self.txn
        return self.end_offset if state is None else state.last_stable_offset(self.end_offset)

    def retained(self, *, committed: bool | None = None) -> Sequence[Record]:
        """Every retained record, oldest first.

        With transactions, control markers are left out; ``committed=True`` also
        leaves out aborted records and stops at the last stable offset.
        """
        records = self._records[self._head :]
        state = self.txn
        if state is None:
            return records
        end = state.last_stable_offset(self.end_offset) if committed else self.end_offset
        return [r for r in records if r.offset < end and state.visible(r.offset, bool(committed))]

    def _trim(self, count: int) -> None:
        self._head += count
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._records):
            del self._records[: self._head]
            self._base += self._head
            self._head = 0
            if self.txn is not None:
                self.txn.prune(self._base)
