"""Fetched records that aiokafka cannot decode become placeholders, never a stuck partition.

aiokafka parses each record batch in C. A record it cannot decode (a header key that
is not valid UTF-8, which some clients write and Kafka stores) makes the parser
raise inside ``getmany``: the rest of the fetch is lost with it, the position does
not move, and every later ``getmany`` raises again, for good.

Consumers started by the adapter inside :func:`tolerant_fetching` parse differently.
Their fetcher keeps each response's bytes; when aiokafka's parser fails inside a
batch, that batch alone is parsed again here, record by record: records that decode
are handed on as usual, and each one that does not becomes an
:class:`~core.streaming.types.UnreadableRecord` at its own offset, so the partition
moves past it and the original stays readable at its source offset. Batches that
parse, which is all of them in practice, take aiokafka's own C path; the cost is a
generator step per record. Consumers made outside the adapter are left untouched.

The hook replaces two names aiokafka's fetcher module looks up for every fetched
partition (``MemoryRecords`` and ``PartitionRecords``) with factories that defer to
the originals. :func:`installed` tells whether the aiokafka in use has that shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import struct
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import CorruptRecordException
from aiokafka.record.util import decode_varint

from core.streaming.types import Headers, UnreadableRecord

_ORIGINAL_MEMORY_RECORDS: Callable[[bytes], Any] = _fetcher.MemoryRecords
_ORIGINAL_PARTITION_RECORDS: type[Any] = _fetcher.PartitionRecords

_tolerant: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tradestream_tolerant_fetching", default=False
)

#: Errors of aiokafka's parser for a record whose bytes do not decode.
PARSE_ERRORS: tuple[type[BaseException], ...] = (ValueError, IndexError, CorruptRecordException)

# Record batch v2 layout (KIP-98): offsets of the fields used here.
_LOG_OVERHEAD = 12  # base offset (int64) + batch length (int32)
_MAGIC = 16
_ATTRIBUTES = 21
_FIRST_TIMESTAMP = 27
_MAX_TIMESTAMP = 35
_RECORDS = 61
_CODEC_MASK = 0x07
_LOG_APPEND_TIME = 0x08
_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


@contextlib.contextmanager
def tolerant_fetching() -> Iterator[None]:
    """Consumers started inside this block parse fetched batches tolerantly.

    aiokafka's fetcher task is created when the consumer starts and inherits the
    context of that moment, so the setting follows it and nothing else.
    """
    token = _tolerant.set(True)
    try:
        yield
    finally:
        _tolerant.reset(token)


def installed() -> bool:
    """True when aiokafka's fetcher uses the tolerant factories."""
    return _fetcher.MemoryRecords is _memory_records and (
        _fetcher.PartitionRecords is _partition_records
    )


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A record of a batch that would not decode: where it is, and why."""

    offset: int
    timestamp: int
    size: int
    error: str


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A record parsed here, with the attributes aiokafka's record objects have."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    checksum: None = None


class _TolerantBatch:
    """One record batch: aiokafka's C batch, re-parsed here if a record fails to decode."""

    __slots__ = ("_batch", "_data", "_source")

    def __init__(self, batch: Any, data: memoryview, source: _SlicingMemoryRecords) -> None:
        self._batch = batch
        self._data = data
        self._source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        return bool(self._batch.validate_crc())

    def __next__(self) -> Any:  # control batches are read one record at a time
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._batch
        except PARSE_ERRORS as exc:
            _admit_unreadable(self._source.owner())
            # aiokafka's loop skips the records it already took (their offsets lie
            # below its next fetch offset), so the whole batch is parsed again.
            yield from parse_batch_leniently(bytes(self._data), exc)


class _SlicingMemoryRecords:
    """aiokafka's ``MemoryRecords`` over a fetch response, keeping each batch's bytes."""

    __slots__ = ("_data", "_pos", "_records", "owner")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._records = _ORIGINAL_MEMORY_RECORDS(data)
        # The PartitionRecords reading these batches; weak, so no reference cycle
        # keeps a fetch response alive until the cyclic garbage collector runs.
        self.owner: Callable[[], Any] = _nobody

    def size_in_bytes(self) -> int:
        return len(self._data)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        # The same framing aiokafka's MemoryRecords reads: 12 bytes, then the batch.
        (length,) = struct.unpack_from(">i", self._data, start + 8)
        end = start + _LOG_OVERHEAD + length
        self._pos = end
        if self._data[start + _MAGIC] < 2:
            return batch  # legacy formats carry no headers
        return _TolerantBatch(batch, self._data[start:end], self)


def _memory_records(data: bytes) -> Any:
    if _tolerant.get():
        return _SlicingMemoryRecords(data)
    return _ORIGINAL_MEMORY_RECORDS(data)


def _partition_records(tp: Any, records: Any, *args: Any) -> Any:
    partition_records = _ORIGINAL_PARTITION_RECORDS(tp, records, *args)
    if isinstance(records, _SlicingMemoryRecords):
        records.owner = weakref.ref(partition_records)
    return partition_records


def _nobody() -> None:
    return None


def _admit_unreadable(partition_records: Any) -> None:
    """Let ``partition_records`` hand out placeholders from now on.

    Done only once a batch of it failed, so records of every other fetch go
    through aiokafka's own ``_consumer_record`` without an extra check.
    """
    if partition_records is None or "_consumer_record" in vars(partition_records):
        return
    original = partition_records._consumer_record

    def consumer_record(tp: Any, record: Any) -> Any:
        if type(record) is _Unreadable:
            return UnreadableRecord(
                tp.topic, tp.partition, record.offset, record.timestamp, record.error, record.size
            )
        return original(tp, record)

    partition_records._consumer_record = consumer_record


def install() -> None:
    """Point aiokafka's fetcher at the tolerant factories (idempotent)."""
    if not hasattr(_ORIGINAL_PARTITION_RECORDS, "_consumer_record"):
        raise ImportError(
            "aiokafka's PartitionRecords has no _consumer_record: this aiokafka version "
            "is not the one core.streaming.kafka.records was written for"
        )
    _fetcher.MemoryRecords = _memory_records
    _fetcher.PartitionRecords = _partition_records


# --------------------------------------------------------------------------- lenient parser


def parse_batch_leniently(batch: bytes, cause: BaseException) -> Iterator[_Parsed | _Unreadable]:
    """Every record of a v2 batch; those that do not decode as :class:`_Unreadable`.

    Each record is located by its own length prefix, so one that does not decode
    does not hide the next. ``cause`` is re-raised when the batch's framing itself
    is broken (nothing after it can be located).
    """
    base_offset = struct.unpack_from(">q", batch, 0)[0]
    attributes = struct.unpack_from(">h", batch, _ATTRIBUTES)[0]
    first_timestamp = struct.unpack_from(">q", batch, _FIRST_TIMESTAMP)[0]
    max_timestamp = struct.unpack_from(">q", batch, _MAX_TIMESTAMP)[0]
    log_append = bool(attributes & _LOG_APPEND_TIME)
    timestamp_type = 1 if log_append else 0
    codec = attributes & _CODEC_MASK
    body = bytes(batch[_RECORDS:])
    if codec:
        try:
            body = _DECOMPRESS[codec](body)
        except Exception as exc:
            raise cause from exc
    buffer = bytearray(body)
    pos = 0
    while pos < len(buffer):
        try:
            length, start = decode_varint(buffer, pos)
        except Exception as exc:
            raise cause from exc
        end = start + length
        if length < 0 or end > len(buffer):
            raise cause
        try:
            parsed = _parse_record(buffer, start, end, base_offset, first_timestamp)
        except Exception as exc:
            raise cause from exc
        if isinstance(parsed, _Parsed):
            timestamp = max_timestamp if log_append else parsed.timestamp
            yield _Parsed(
                parsed.offset, timestamp, timestamp_type, parsed.key, parsed.value, parsed.headers
            )
        else:
            yield parsed
        pos = end


def _parse_record(
    buffer: bytearray, start: int, end: int, base_offset: int, first_timestamp: int
) -> _Parsed | _Unreadable:
    """One record between ``start`` and ``end``; raises only if its offset cannot be read."""
    _, pos = decode_varint(buffer, start)  # attributes
    timestamp_delta, pos = decode_varint(buffer, pos)
    offset_delta, pos = decode_varint(buffer, pos)
    offset = base_offset + offset_delta
    timestamp = first_timestamp + timestamp_delta
    size = end - start
    try:
        key, pos = _nullable_bytes(buffer, pos, end)
        value, pos = _nullable_bytes(buffer, pos, end)
        count, pos = decode_varint(buffer, pos)
        if count < 0:
            raise ValueError(f"negative header count {count}")
        headers: list[tuple[str, bytes | None]] = []
        for index in range(count):
            raw_name, pos = _nullable_bytes(buffer, pos, end)
            if raw_name is None:
                raise ValueError(f"header {index} has no key")
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"header {index} key is not valid UTF-8 ({exc.reason} at byte {exc.start})"
                ) from exc
            data, pos = _nullable_bytes(buffer, pos, end)
            headers.append((name, data))
        if pos != end:
            raise ValueError(f"{end - pos} bytes left over after the headers")
    except (ValueError, IndexError) as exc:
        return _Unreadable(offset, timestamp, size, f"record could not be decoded: {exc}")
    return _Parsed(offset, timestamp, 0, key, value, tuple(headers))


def _nullable_bytes(buffer: bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise ValueError(f"a field of {length} bytes runs past the end of its record")
    return bytes(buffer[pos : pos + length]), pos + length
