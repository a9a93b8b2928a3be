"""Per-message CPU cost of each step ``MessageConsumer`` adds on top of raw aiokafka.

No broker: builds ``--messages`` aiokafka ``ConsumerRecord`` objects holding the same
~220-byte envelopes ``bench_consume.py`` produces, then times (best of ``--rounds``,
garbage collector off, so allocation and GC are not mixed into the numbers) each step of
the consume path in isolation:

* ``orjson.loads``                    -- the only per-message work of the raw baseline;
* ``Record`` copy                     -- ``KafkaConsumerClient.getmany`` re-wrapping each
                                         aiokafka record in a frozen ``Record``;
* ``decode_record``                   -- ``orjson.loads`` + checks + ``ConsumedMessage``;
* ``PartitionOffsets.fetched``        -- in-flight bookkeeping in ``fetch_batch``;
* ``ConsumedMessage.topic_partition`` -- the ``TopicPartition`` built per lookup;
* ``mark_finished``                   -- lookup + generation check + ``finish``;
* ``await commit(message)``           -- the above as a coroutine, with a no-op client
                                         commit every 500 (the default policy).

Steps that allocate run over slices of 500 records, each result held until the next slice,
as a consumer holds one fetched batch. A last line repeats ``decode_record`` with the
collector on. The heap here is small, so the real run's GC cost (full collections over
aiokafka's and the app's objects) is much larger: see ``bench_consume.py``'s ``gc s``.

    .venv/bin/python benchmarks/micro_consume.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402

from core.config.settings import RedpandaSettings  # noqa: E402
from core.streaming.infrastructure.consumed_message import decode_record  # noqa: E402
from core.streaming.infrastructure.message_consumer import MessageConsumer  # noqa: E402
from core.streaming.infrastructure.message_producer import MessageProducer  # noqa: E402
from core.streaming.infrastructure.offset_tracker import PartitionOffsets  # noqa: E402
from core.streaming.types import Record, TopicPartition  # noqa: E402

PARTITIONS = 3
TOPIC = "bench.micro"
BATCH = 500  # records per getmany, as in bench_consume.py


class _NoopClient:
    """Stands in for the broker client: commits cost nothing."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        return None


def make_records(count: int) -> list[Any]:
    producer = MessageProducer(RedpandaSettings(), "bench")
    records: list[Any] = []
    for i in range(count):
        envelope = producer.build_envelope({"sym": "AAPL", "seq": i}, "trade")
        value = orjson.dumps(envelope)
        headers = tuple(producer.envelope_headers(envelope))
        records.append(
            ConsumerRecord(
                TOPIC, i % PARTITIONS, i, 0, 0, b"AAPL", value, None, 4, len(value), headers
            )
        )
    return records


def copy_records(records: list[Any]) -> list[Record]:
    """What ``KafkaConsumerClient.getmany`` does to every fetched record."""
    return [
        Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp)
        for r in records
    ]


def consumer_with(records: list[Record]) -> MessageConsumer:
    consumer = MessageConsumer(RedpandaSettings(), [TOPIC], "bench-micro")
    consumer._client = _NoopClient()  # type: ignore[assignment]
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        state = consumer._offsets.get(tp)
        if state is None:
            state = consumer._offsets[tp] = PartitionOffsets(consumer._generation)
        state.fetched(record.offset)
    return consumer


def per_batch(items: list[Any], fn: Callable[[list[Any]], list[Any]]) -> Callable[[], float]:
    """Time ``fn`` over slices of ``BATCH``, each result held until the next slice."""

    def step() -> float:
        started = time.perf_counter()
        for start in range(0, len(items), BATCH):
            held = fn(items[start : start + BATCH])
            del held
        return time.perf_counter() - started

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="records (100000)")
    parser.add_argument("--rounds", type=int, default=7, help="best of N (7)")
    args = parser.parse_args()
    count: int = args.messages
    rounds: int = args.rounds
    raw_records = make_records(count)
    records = copy_records(raw_records)
    messages = [decode_record(r, 1) for r in records]
    loads = orjson.loads

    def loads_all(batch: list[Any]) -> list[Any]:
        return [loads(r.value) for r in batch]

    def decode_all(batch: list[Any]) -> list[Any]:
        return [decode_record(r, 1) for r in batch]

    def fetched() -> float:
        state = PartitionOffsets(1)
        started = time.perf_counter()
        for r in records:
            state.fetched(r.offset)
        return time.perf_counter() - started

    def topic_partitions() -> float:
        started = time.perf_counter()
        for m in messages:
            m.topic_partition  # noqa: B018
        return time.perf_counter() - started

    def mark_all() -> float:
        consumer = consumer_with(records)
        mark = consumer.mark_finished
        started = time.perf_counter()
        for m in messages:
            mark(m)
        return time.perf_counter() - started

    async def commit_all() -> float:
        consumer = consumer_with(records)
        started = time.perf_counter()
        for m in messages:
            await consumer.commit(m)
        return time.perf_counter() - started

    loop = asyncio.new_event_loop()
    steps: list[tuple[str, Callable[[], float]]] = [
        ("orjson.loads (raw baseline's work)", per_batch(raw_records, loads_all)),
        ("Record copy (KafkaConsumerClient.getmany)", per_batch(raw_records, copy_records)),
        ("decode_record (loads + ConsumedMessage)", per_batch(records, decode_all)),
        ("PartitionOffsets.fetched", fetched),
        ("ConsumedMessage.topic_partition", topic_partitions),
        ("MessageConsumer.mark_finished", mark_all),
        ("await MessageConsumer.commit(message)", lambda: loop.run_until_complete(commit_all())),
    ]
    rows: list[tuple[str, float]] = []
    gc.collect()
    gc.disable()
    try:
        for label, step in steps:
            rows.append((label, min(step() for _ in range(rounds))))
    finally:
        gc.enable()
        loop.close()
    gc_on = min(per_batch(records, decode_all)() for _ in range(rounds))
    rows.append(("decode_record, same, GC on", gc_on))

    print(f"{count:,} messages, batches of {BATCH}, best of {rounds}, GC off unless said")
    for label, seconds in rows:
        print(f"  {label:<44} {seconds / count * 1e6:6.2f} us/message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
