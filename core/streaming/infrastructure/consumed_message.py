"""The message object a ``MessageConsumer`` yields, and how raw bytes become one.

A :class:`ConsumedMessage` is also the unit of delivery state on the way through
a flow: its dedup claim, the outputs its handler sent, and the :class:`Outcome`
it reached. Keeping that state on the message itself (slots, no second object per
record) keeps the per-message cost of the hot path low.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Sequence
from enum import StrEnum
from typing import Any

import orjson

from core.streaming.types import FetchedRecord, Headers, Record, TopicPartition


class Outcome(StrEnum):
    """The state a message reached in its flow.

    ``HANDLED``, ``DUPLICATE``, ``DEAD_LETTERED`` and ``RETRY_SCHEDULED`` (moved
    to a retry topic) are final: the offset may be committed once the checkpoint
    has the outputs acknowledged and the done mark written. ``FAILED`` means the
    last attempt failed and the error path has not decided yet; a message without
    an outcome has not run (yet).
    """

    HANDLED = "handled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"


#: Outcomes after which a message's offset may be committed.
FINAL_OUTCOMES = frozenset(
    {Outcome.HANDLED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED, Outcome.RETRY_SCHEDULED}
)
#: Final outcomes of messages that left the flow unhandled: their dedup claims are given back.
LEFT_FLOW = frozenset({Outcome.DEAD_LETTERED, Outcome.RETRY_SCHEDULED})


def envelope_id(value: dict[str, Any] | None) -> str | None:
    """The ``id`` of a value with an envelope's shape (id, type, source, data), else ``None``."""
    if value is None:
        return None
    event_id = value.get("id")
    if (
        type(event_id) is str
        and event_id
        and type(value.get("type")) is str
        and type(value.get("source")) is str
        and type(value.get("data")) is dict
    ):
        return event_id
    return None


class ConsumedMessage:
    """One fetched record: where it came from, its bytes, its value and its delivery state.

    ``value`` is the decoded JSON object (usually an event envelope), or ``None``
    when the bytes could not be decoded; then ``decode_error`` says why and
    ``raw_value`` still holds the bytes untouched, so the message can be
    dead-lettered. The broker client's record is kept as it is (no copy).

    Delivery state, set as the message moves through its flow: ``identity`` (the
    id it is deduplicated on), ``claim`` (the dedup claim result), ``claim_token``
    (the owner token of our claim), ``outcome`` and ``error`` (see
    :class:`Outcome`), ``attempts`` (handler runs), ``outputs``
    (acknowledgements of the sends its handler started, awaited by the checkpoint
    before the offset is committed) and ``duration`` (seconds spent in the
    handler's last attempt).
    """

    __slots__ = (
        "attempts",
        "claim",
        "claim_token",
        "correlator",
        "decode_error",
        "duration",
        "error",
        "generation",
        "identity",
        "nbytes",
        "outcome",
        "outputs",
        "record",
        "trace",
        "value",
    )

    def __init__(
        self,
        record: FetchedRecord,
        value: dict[str, Any] | None,
        decode_error: str | None = None,
        generation: int = 0,
    ) -> None:
        self.record = record
        if type(value) is not dict and decode_error is None and value is not None:
            decode_error = f"JSON value is a {type(value).__name__}, not an object"
            value = None
        self.value = value
        self.decode_error = decode_error
        self.generation = generation
        self.nbytes = len(record.value or b"") + len(record.key or b"")
        self.claim: Any = None
        self.claim_token: str | None = None
        self.identity: str | None = None
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.attempts = 0
        self.outputs: list[Awaitable[Any]] | None = None
        self.duration = 0.0
        self.correlator: Any = None
        self.trace: Any = None

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
        """Record headers, untouched (a header value may be ``None``)."""
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
    def size(self) -> int:
        """Bytes of key and value, for in-flight byte bounds."""
        return self.nbytes

    @property
    def record_size(self) -> int:
        """Bytes of key, value and headers: what the record costs the broker."""
        headers = sum(len(k) + len(v or b"") for k, v in self.record.headers)
        return self.size + headers

    @property
    def is_envelope(self) -> bool:
        """True when the value has an envelope's shape: id, type, source and data."""
        return envelope_id(self.value) is not None

    @property
    def event_id(self) -> str | None:
        """The envelope's ``id`` when the value is a valid envelope, else ``None``.

        A foreign JSON object that happens to carry an ``id`` field has no event
        id: it is never taken for a duplicate of a different message.
        """
        return envelope_id(self.value)

    def header(self, name: str) -> bytes | None:
        """The last header called ``name`` (``None`` when absent or null)."""
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
    """Decode a record's value as a JSON object; never raises on bad bytes.

    A record the client itself could not read (it carries ``client_error``) is
    undecodable too, so it is dead-lettered like any other.
    """
    raw = record.value
    if raw is None:
        client_error = getattr(record, "client_error", None)
        if client_error is not None:
            return ConsumedMessage(record, None, f"unreadable record: {client_error}", generation)
        return ConsumedMessage(record, None, "empty value (tombstone)", generation)
    try:
        decoded = _loads(raw)
    except _JSONDecodeError as exc:
        return ConsumedMessage(record, None, f"not valid UTF-8 JSON: {exc}", generation)
    return ConsumedMessage(record, decoded, None, generation)


def decode_records(records: Sequence[FetchedRecord], generation: int = 0) -> list[ConsumedMessage]:
    """:func:`decode_record` for a fetched batch, with a fast path for well-formed ones."""
    try:
        # A tombstone (None) raises TypeError here and takes the slow path.
        return [ConsumedMessage(r, _loads(r.value), None, generation) for r in records]  # type: ignore[arg-type]
    except (_JSONDecodeError, TypeError):
        return [decode_record(r, generation) for r in records]


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


#: The message whose handler the current task is running (set per handler call).
HANDLING: contextvars.ContextVar[ConsumedMessage | None] = contextvars.ContextVar(
    "tradestream_handling", default=None
)


def current_message() -> ConsumedMessage | None:
    """The message whose handler the current task is running, if any."""
    return HANDLING.get()


def set_current_message(
    message: ConsumedMessage | None,
) -> contextvars.Token[ConsumedMessage | None]:
    """Make ``message`` the current task's; reset with the returned token."""
    return HANDLING.set(message)


def reset_current_message(token: contextvars.Token[ConsumedMessage | None]) -> None:
    """Undo :func:`set_current_message`."""
    HANDLING.reset(token)


def track_output(ack: Awaitable[Any]) -> bool:
    """Attach a send's acknowledgement to the message being handled; False if none.

    The checkpoint awaits these before the message's offset is committed, so a
    send that fails after the handler returned fails the message instead of
    vanishing.
    """
    message = HANDLING.get()
    if message is None:
        return False
    if message.outputs is None:
        message.outputs = [ack]
    else:
        message.outputs.append(ack)
    return True
