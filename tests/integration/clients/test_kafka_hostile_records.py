"""Records the Kafka client cannot decode never stop their partition (real Kafka).

A header key that is not valid UTF-8 makes aiokafka's record parser raise inside
``getmany``. The adapter hands out an ``UnreadableRecord`` at that offset instead,
delivers every other record of the fetch, and moves on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from core.config.settings import RedpandaSettings
from core.streaming.clients import ConsumerOptions, create_consumer, create_producer
from core.streaming.types import FetchedRecord, TopicPartition, UnreadableRecord
from tests.raw_batches import produce_raw, raw_batch

if TYPE_CHECKING:
    from core.streaming.broker_api import ConsumerClient
    from tests.conftest import KafkaAdmin

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

BAD_KEY = b"\xff\xfe-not-utf8"


async def _drain(consumer: ConsumerClient, count: int, max_records: int | None = None) -> list:
    records: list[FetchedRecord] = []
    deadline = time.monotonic() + 30
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count}: {records}"
        for batch in (await consumer.getmany(timeout_ms=200, max_records=max_records)).values():
            records.extend(batch)
    return records


@pytest.mark.parametrize("max_records", [None, 1])
async def test_a_header_key_that_is_not_utf8_stands_as_a_placeholder_and_the_rest_flows(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str, max_records: int | None
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=2)
    settings = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    producer = create_producer(settings)
    await producer.start()
    try:
        await (await producer.send(topic, b"v0", key=b"k0", partition=0))
        # One batch: good, bad (first header), good, bad (second header), good.
        await produce_raw(
            kafka_bootstrap,
            topic,
            0,
            raw_batch(
                [
                    (b"k1", b"v1", [(b"ok", b"1")]),
                    (b"k2", b"v2", [(BAD_KEY, b"x")]),
                    (b"k3", b"v3", [(b"ok", None)]),
                    (b"k4", b"v4", [(b"fine", b"y"), (BAD_KEY, b"z")]),
                    (b"k5", b"v5", []),
                ]
            ),
        )
        # A batch that starts with a bad record, and one that is nothing but one.
        await produce_raw(
            kafka_bootstrap,
            topic,
            0,
            raw_batch([(None, b"v6", [(BAD_KEY, b"")]), (b"k7", b"v7", [(b"h", b"7")])]),
        )
        await produce_raw(kafka_bootstrap, topic, 0, raw_batch([(b"k8", None, [(BAD_KEY, b"")])]))
        await (await producer.send(topic, b"v9", key=b"k9", partition=0))
        for i in range(3):
            await (await producer.send(topic, f"p1-{i}".encode(), partition=1))
    finally:
        await producer.stop()

    consumer = create_consumer(settings, [topic], f"{unique_name}-g", ConsumerOptions())
    await consumer.start()
    try:
        records = await _drain(consumer, 13, max_records)
        assert await consumer.getmany(timeout_ms=500) == {}
        end = await consumer.position(TopicPartition(topic, 0))
    finally:
        await consumer.stop()

    by_partition: dict[int, list[FetchedRecord]] = {0: [], 1: []}
    for record in records:
        by_partition[record.partition].append(record)
    assert [r.value for r in by_partition[1]] == [b"p1-0", b"p1-1", b"p1-2"]
    first = by_partition[0]
    assert [r.offset for r in first] == list(range(10))
    assert end == 10
    unreadable = {r.offset: r for r in first if isinstance(r, UnreadableRecord)}
    assert sorted(unreadable) == [2, 4, 6, 8]
    for record in unreadable.values():
        assert (record.topic, record.partition) == (topic, 0)
        assert (record.key, record.value, tuple(record.headers)) == (None, None, ())
        assert "UTF-8" in record.client_error
        assert record.size is not None and record.size > 0
        assert record.timestamp > 0
    readable = {r.offset: r for r in first if not isinstance(r, UnreadableRecord)}
    assert {o: (r.key, r.value) for o, r in readable.items()} == {
        0: (b"k0", b"v0"),
        1: (b"k1", b"v1"),
        3: (b"k3", b"v3"),
        5: (b"k5", b"v5"),
        7: (b"k7", b"v7"),
        9: (b"k9", b"v9"),
    }
    assert list(readable[1].headers) == [("ok", b"1")]
    assert list(readable[3].headers) == [("ok", None)]
    assert list(readable[7].headers) == [("h", b"7")]
