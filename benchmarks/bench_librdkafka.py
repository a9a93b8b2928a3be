"""The raw consume loop on librdkafka (confluent-kafka), for ``bench_peers.py``.

What a librdkafka-backed client behind our client surface would cost per message:

* ``raw-librdkafka``     -- ``Consumer.consume(500)`` + ``orjson.loads`` of each
  value, an asynchronous commit every second (as ``raw-interval`` on aiokafka);
* ``librdkafka-records`` -- the same, each message first turned into a record
  with the attributes our layers read (topic, partition, offset, key, value,
  headers, timestamp), as an adapter behind ``ConsumerClient.getmany`` would.

confluent-kafka is installed with Quix Streams (``requirements-peers.txt``).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any, NamedTuple, Protocol


class _Clock(Protocol):
    count: int
    seen: int

    def tick(self, n: int = 1) -> None: ...


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any
    timestamp: int


def child_librdkafka(args: argparse.Namespace, clock: _Clock, records: bool) -> None:
    """Consume ``clock.count`` messages of ``args.topic`` with confluent-kafka."""
    import orjson
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group or f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    loads = orjson.loads
    last_commit = time.monotonic()
    deadline = time.monotonic() + args.timeout
    try:
        while clock.seen < clock.count and time.monotonic() < deadline:
            messages = consumer.consume(500, 0.1)
            if not messages:
                continue
            if records:
                batch = [
                    _Record(
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        m.headers() or (),
                        m.timestamp()[1],
                    )
                    for m in messages
                ]
                for record in batch:
                    loads(record.value)
            else:
                for message in messages:
                    loads(message.value())
            clock.tick(len(messages))
            if time.monotonic() - last_commit >= 1.0:
                last_commit = time.monotonic()
                consumer.commit(asynchronous=True)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
