"""Read, select and replay dead letters (the tools behind ``tradestream dlq``).

A dead letter keeps the original key and value bytes and carries ``dlq.*``
headers (see :mod:`core.streaming.reliability.error_handler`). Replay sends the
original bytes back with the original headers (``dlq.*`` headers dropped,
``dlq.replayed.from`` added). The event id inside the bytes is unchanged, and a
dead-lettered event's dedup claim was released, so the replayed copy is handled
like a first delivery.

Trust boundaries. Headers are data anyone who can write to the dead-letter
topic controls, so they never choose where a replay goes: the target is the
topic the dead-letter topic belongs to (its name minus the dead-letter suffix)
or one the operator names, and a record whose ``dlq.original.topic`` says
otherwise is refused. Header values may be missing, ``None`` or not UTF-8; the
tools show such values and never fail on them.

Replays are recorded: each replayed record gets a mark in ``<dlq topic>.replayed``
(keyed by its position), so listings show what was replayed and when, and a
second replay of the same record is refused unless forced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import orjson

from core.config.settings import RedpandaSettings
from core.streaming.clients import create_admin
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.reliability.error_handler import (
    HEADER_ATTEMPTS,
    HEADER_EXCEPTION_MESSAGE,
    HEADER_EXCEPTION_TYPE,
    HEADER_FAILED_AT,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC,
)
from core.streaming.topic_reader import read_topics
from core.streaming.types import FetchedRecord, TopicSpec

HEADER_REPLAYED_FROM = "dlq.replayed.from"
REPLAY_MARKS_SUFFIX = ".replayed"
NULL_HEADER = "<null>"
_DLQ_PREFIX = "dlq."

RawHeaders = Sequence[tuple[str, bytes | None]]


class ReplayRefusedError(ValueError):
    """A replay was refused before anything was sent; the message says why."""


@dataclass(frozen=True)
class ReplayMark:
    """That a dead letter was replayed, when, and where the copy landed."""

    position: str
    replayed_at: str
    target: str


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of a dead-letter topic, with its replay mark if it was replayed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders
    replayed: ReplayMark | None = None

    @classmethod
    def of(cls, record: FetchedRecord, replayed: ReplayMark | None = None) -> DeadLetterRecord:
        """The dead letter a fetched record of a dead-letter topic holds."""
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            tuple(record.headers),
            replayed,
        )

    @property
    def position(self) -> str:
        """``partition:offset`` within the dead-letter topic (how records are selected)."""
        return f"{self.partition}:{self.offset}"

    def header_values(self, name: str) -> list[str | None]:
        """Every value of header ``name``, decoded (undecodable bytes replaced; None kept)."""
        return [_decode(value) for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` decoded as UTF-8, or ``None``."""
        values = self.header_values(name)
        return values[-1] if values else None

    @property
    def original_topic(self) -> str | None:
        """Topic the message was consumed from, as its header says."""
        return self.header(HEADER_ORIGINAL_TOPIC)

    @property
    def original_location(self) -> str:
        """``topic[partition]@offset`` of the original record."""
        return (
            f"{self.original_topic}[{self.header(HEADER_ORIGINAL_PARTITION)}]"
            f"@{self.header(HEADER_ORIGINAL_OFFSET)}"
        )

    @property
    def error_type(self) -> str:
        """Exception class that sent it here."""
        return self.header(HEADER_EXCEPTION_TYPE) or "?"

    @property
    def error_message(self) -> str:
        """The exception's message (bounded)."""
        return self.header(HEADER_EXCEPTION_MESSAGE) or ""

    @property
    def attempts(self) -> str:
        """How many times the handler ran before giving up."""
        return self.header(HEADER_ATTEMPTS) or "?"

    @property
    def failed_at(self) -> str:
        """When the dead letter was written, after the last attempt (ISO UTC)."""
        return self.header(HEADER_FAILED_AT) or "?"

    def decoded_headers(self) -> dict[str, str]:
        """Every header decoded (a repeated name keeps its last value; a None value is ``""``)."""
        return {key: _decode(value) or "" for key, value in self.headers}

    def shown_headers(self) -> list[tuple[str, str]]:
        """Every header, in order and repeats included, for display: None shows ``<null>``."""
        return [
            (key, NULL_HEADER if value is None else _decode(value) or "")
            for key, value in self.headers
        ]

    def payload_text(self, limit: int = 4_000) -> str:
        """The value as indented JSON when it is JSON, else an escaped byte string."""
        if self.value is None:
            return "<no value>"
        try:
            text = orjson.dumps(orjson.loads(self.value), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            text = repr(self.value)
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"

    def replay_headers(self) -> list[tuple[str, bytes | None]]:
        """Original headers without ``dlq.*``, plus where the replay came from."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(_DLQ_PREFIX)]
        kept.append(
            (HEADER_REPLAYED_FROM, f"{self.topic}[{self.partition}]@{self.offset}".encode())
        )
        return kept

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready summary (for ``dlq list --json``)."""
        return {
            "position": self.position,
            "original": self.original_location,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "replayed_at": self.replayed.replayed_at if self.replayed else None,
            "replayed_to": self.replayed.target if self.replayed else None,
        }


def _decode(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", "replace")


def replay_marks_topic(dlq_topic: str) -> str:
    """Where replays of ``dlq_topic``'s records are recorded."""
    return f"{dlq_topic}{REPLAY_MARKS_SUFFIX}"


def _parse_mark(value: bytes | None) -> ReplayMark | None:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    fields = [data.get("position"), data.get("replayed_at"), data.get("target")]
    if not all(isinstance(f, str) for f in fields):
        return None
    return ReplayMark(str(fields[0]), str(fields[1]), str(fields[2]))


async def read_dead_letters(
    config: RedpandaSettings, dlq_topic: str, *, timeout_s: float = 15.0
) -> list[DeadLetterRecord]:
    """Every record of ``dlq_topic`` up to its current end, with replay marks; commits nothing.

    A topic that does not exist reads as empty.
    """
    marks_topic = replay_marks_topic(dlq_topic)
    records = await read_topics(config, [dlq_topic, marks_topic], timeout_s=timeout_s)
    marks: dict[str, ReplayMark] = {}
    for r in records:
        if r.topic == marks_topic:
            mark = _parse_mark(r.value)
            if mark is not None:
                marks[mark.position] = mark
    return [
        DeadLetterRecord.of(r, marks.get(f"{r.partition}:{r.offset}"))
        for r in records
        if r.topic == dlq_topic
    ]


def select_dead_letters(
    records: Iterable[DeadLetterRecord],
    *,
    positions: Sequence[str] = (),
    error_type: str | None = None,
    original_topic: str | None = None,
) -> list[DeadLetterRecord]:
    """Records matching every given filter (``positions`` as ``partition:offset``)."""
    wanted = set(positions)
    out = []
    for record in records:
        if wanted and record.position not in wanted:
            continue
        if error_type and error_type.lower() not in record.error_type.lower():
            continue
        if original_topic and record.original_topic != original_topic:
            continue
        out.append(record)
    return out


def replay_target(dlq_topic: str, suffix: str, explicit: str | None = None) -> str:
    """The topic replays of ``dlq_topic`` go to: ``explicit``, else its name minus ``suffix``.

    Raises :class:`ReplayRefusedError` when neither gives a topic.
    """
    if explicit:
        return explicit
    if suffix and dlq_topic.endswith(suffix) and len(dlq_topic) > len(suffix):
        return dlq_topic[: -len(suffix)]
    raise ReplayRefusedError(
        f"{dlq_topic} does not end with the dead-letter suffix {suffix!r}, so the topic it "
        "belongs to is unknown; name the target topic explicitly (--to)"
    )


def check_replay(
    records: Sequence[DeadLetterRecord], target: str, *, explicit: bool, force: bool
) -> None:
    """Refuse a replay whose records disagree with ``target`` or were already replayed.

    Every ``dlq.original.topic`` header of a record must name ``target``; a record
    without the header is accepted only when the operator named the target.
    Already replayed records are refused unless ``force``.
    """
    problems: list[str] = []
    for record in records:
        claimed = record.header_values(HEADER_ORIGINAL_TOPIC)
        if not claimed:
            if not explicit:
                problems.append(f"{record.position} has no {HEADER_ORIGINAL_TOPIC} header")
        elif any(value != target for value in claimed):
            shown = ", ".join(repr(v) for v in claimed)
            problems.append(
                f"{record.position} says it came from {shown}, not {target}: refused "
                "(a header cannot choose where a replay goes)"
            )
        if record.replayed is not None and not force:
            problems.append(
                f"{record.position} was already replayed at {record.replayed.replayed_at} "
                f"(to {record.replayed.target}); use --force to replay it again"
            )
    if problems:
        raise ReplayRefusedError("nothing replayed:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class ReplayResult:
    """Where one replayed dead letter landed, and whether its replay mark was written.

    ``topic``, ``partition`` and ``offset`` are the broker's acknowledgement of
    the copy; ``target`` is the same as ``topic[partition]@offset`` text.
    """

    record: DeadLetterRecord
    topic: str
    partition: int
    offset: int
    marked: bool

    @property
    def target(self) -> str:
        """``topic[partition]@offset`` of the copy."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


async def replay_dead_letters(
    config: RedpandaSettings,
    records: Sequence[DeadLetterRecord],
    *,
    target: str | None = None,
    explicit_target: bool = False,
    force: bool = False,
    suffix: str = ".dlq",
    service_name: str = "dlq-replay",
) -> list[ReplayResult]:
    """Send each record's original bytes to ``target`` with one producer; mark each replay.

    ``target`` defaults to the topic the records' dead-letter topic belongs to
    (its name minus ``suffix``). Checks every record first (:func:`check_replay`)
    and sends nothing when one is refused. A mark that cannot be written after a
    successful send is reported (``marked=False``), not retried: the replay
    itself happened.
    """
    if not records:
        return []
    if target is None:
        dlq_topics = {r.topic for r in records}
        if len(dlq_topics) != 1:
            raise ReplayRefusedError(
                f"records of several topics {sorted(dlq_topics)}: name a target"
            )
        target = replay_target(dlq_topics.pop(), suffix)
    check_replay(records, target, explicit=explicit_target, force=force)
    dlq_topics = {r.topic for r in records}
    marks_topics = [replay_marks_topic(t) for t in sorted(dlq_topics)]
    admin = create_admin(config)
    await admin.start()
    try:
        await admin.create_topics(
            [TopicSpec(t, 1, config.topic_replication_factor) for t in marks_topics]
        )
    finally:
        await admin.close()
    producer = MessageProducer(config, service_name)
    results: list[ReplayResult] = []
    try:
        for record in records:
            ack = await producer.send_raw(
                target,
                record.key,
                record.value,
                record.replay_headers(),
            )
            landed = f"{ack.topic}[{ack.partition}]@{ack.offset}"
            mark = ReplayMark(
                record.position, datetime.now(UTC).isoformat(timespec="seconds"), landed
            )
            marked = True
            try:
                await producer.send_raw(
                    replay_marks_topic(record.topic),
                    record.position.encode(),
                    orjson.dumps(asdict(mark)),
                )
            except Exception:
                marked = False
            results.append(
                ReplayResult(
                    replace(record, replayed=mark), ack.topic, ack.partition, ack.offset, marked
                )
            )
    finally:
        await producer.stop()
    return results
