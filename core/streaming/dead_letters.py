"""Read, select and replay dead letters (the tools behind ``tradestream dlq``).

A dead letter keeps the original key and value bytes and carries ``dlq.*``
headers (see :mod:`core.streaming.reliability.error_handler`). Replay sends the
original bytes back to the original topic with the original headers (``dlq.*``
headers dropped, ``dlq.replayed.from`` added). The event id inside the bytes is
unchanged, and a dead-lettered event's dedup claim was released, so the replayed
copy is handled like a first delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from core.config.settings import RedpandaSettings
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
from core.streaming.topic_reader import read_topic
from core.streaming.types import Headers, RecordMetadata

HEADER_REPLAYED_FROM = "dlq.replayed.from"
_DLQ_PREFIX = "dlq."


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def position(self) -> str:
        """``partition:offset`` within the dead-letter topic (how records are selected)."""
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        """A header decoded as UTF-8 (undecodable bytes replaced), or ``None``."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = None if value is None else value.decode("utf-8", "replace")
        return found

    @property
    def original_topic(self) -> str | None:
        """Topic the message was consumed from."""
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
        """Every header, decoded."""
        return {k: "" if v is None else v.decode("utf-8", "replace") for k, v in self.headers}

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


async def read_dead_letters(
    config: RedpandaSettings, dlq_topic: str, *, timeout_s: float = 15.0
) -> list[DeadLetterRecord]:
    """Every record of ``dlq_topic`` up to its current end; commits nothing."""
    return [
        DeadLetterRecord(r.topic, r.partition, r.offset, r.key, r.value, r.headers)
        for r in await read_topic(config, dlq_topic, timeout_s=timeout_s)
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


async def replay_dead_letters(
    config: RedpandaSettings,
    records: Sequence[DeadLetterRecord],
    *,
    service_name: str = "dlq-replay",
) -> list[RecordMetadata]:
    """Send each record's original bytes back to its original topic; returns the acks."""
    missing = [r.position for r in records if not r.original_topic]
    if missing:
        raise ValueError(f"records {missing} have no {HEADER_ORIGINAL_TOPIC} header")
    producer = MessageProducer(config, service_name)
    acks = []
    try:
        for record in records:
            assert record.original_topic is not None
            acks.append(
                await producer.send_raw(
                    record.original_topic, record.key, record.value, record.replay_headers()
                )
            )
    finally:
        await producer.stop()
    return acks
