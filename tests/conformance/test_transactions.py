"""Transactions, identically on the embedded broker and on real Kafka.

Commit and abort of records and offsets together, what ``read_committed`` and
``read_uncommitted`` consumers see of open, committed and aborted transactions
(the last stable offset included), the offsets the markers take, fencing of a
zombie producer by a newer one with the same transactional id, and the calls
refused outside a transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.streaming.clients import ConsumerClient, ConsumerOptions
from core.streaming.errors import ProducerFencedError, TransactionStateError
from core.streaming.types import Record, TopicPartition

if TYPE_CHECKING:
    from tests.conformance.conftest import Backend

pytestmark = pytest.mark.timeout(120)

COMMITTED = ConsumerOptions(isolation_level="read_committed")
UNCOMMITTED = ConsumerOptions(isolation_level="read_uncommitted")


async def _reader(backend: Backend, topic: str, options: ConsumerOptions) -> ConsumerClient:
    consumer = backend.consumer([topic], backend.name_for("reader"), options=options)
    await consumer.start()
    return consumer


async def _input_with(backend: Backend, count: int) -> str:
    """A one-partition topic holding ``count`` plain records (offsets to commit against)."""
    topic = await backend.topic(partitions=1)
    producer = await backend.started_producer()
    for i in range(count):
        await (await producer.send(topic, f"in-{i}".encode()))
    return topic


def _values(records: list[Record]) -> list[bytes | None]:
    return [r.value for r in records]


async def test_a_committed_transaction_shows_its_records_and_offsets_together(
    backend: Backend,
) -> None:
    source = await _input_with(backend, 5)
    out = await backend.topic(partitions=1)
    group = backend.name_for("group")
    txn = await backend.transactional_producer(backend.name_for("txn"))
    committed_reader = await _reader(backend, out, COMMITTED)
    uncommitted_reader = await _reader(backend, out, UNCOMMITTED)
    group_member = backend.consumer([source], group)
    await group_member.start()

    await txn.begin_transaction()
    acks = [await txn.send(out, f"r{i}".encode(), key=b"k") for i in range(3)]
    assert [(await ack).offset for ack in acks] == [0, 1, 2]
    await txn.send_offsets_to_transaction({TopicPartition(source, 0): 5}, group)

    # Open: read_uncommitted sees the records, read_committed's end is the stable offset 0.
    assert _values(await backend.drain(uncommitted_reader, 3)) == [b"r0", b"r1", b"r2"]
    assert await committed_reader.end_offsets([TopicPartition(out, 0)]) == {
        TopicPartition(out, 0): 0
    }
    assert await group_member.committed(TopicPartition(source, 0)) is None

    await txn.commit_transaction()

    assert _values(await backend.drain(committed_reader, 3)) == [b"r0", b"r1", b"r2"]
    assert await group_member.committed(TopicPartition(source, 0)) == 5
    # The commit marker took offset 3: the next record lands at 4 on both backends.
    plain = await backend.started_producer()
    assert (await (await plain.send(out, b"after"))).offset == 4
    assert [r.offset for r in await backend.drain(committed_reader, 1)] == [4]


async def test_an_aborted_transaction_leaves_neither_records_nor_offsets(backend: Backend) -> None:
    source = await _input_with(backend, 5)
    out = await backend.topic(partitions=1)
    group = backend.name_for("group")
    txn = await backend.transactional_producer(backend.name_for("txn"))
    group_member = backend.consumer([source], group)
    await group_member.start()

    await txn.begin_transaction()
    for i in range(2):
        await (await txn.send(out, f"aborted-{i}".encode()))
    await txn.send_offsets_to_transaction({TopicPartition(source, 0): 3}, group)
    await txn.abort_transaction()
    await txn.begin_transaction()
    await (await txn.send(out, b"kept"))
    await txn.commit_transaction()

    committed_reader = await _reader(backend, out, COMMITTED)
    uncommitted_reader = await _reader(backend, out, UNCOMMITTED)
    assert _values(await backend.drain(committed_reader, 1)) == [b"kept"]
    seen = await backend.drain(uncommitted_reader, 3)
    assert _values(seen) == [b"aborted-0", b"aborted-1", b"kept"]
    # aborted records at 0 and 1, the abort marker at 2, "kept" at 3, its marker at 4
    assert [r.offset for r in seen] == [0, 1, 3]
    assert await group_member.committed(TopicPartition(source, 0)) is None
    ends = await uncommitted_reader.end_offsets([TopicPartition(out, 0)])
    assert ends == {TopicPartition(out, 0): 5}


async def test_read_committed_stops_at_an_open_transaction_until_it_ends(
    backend: Backend,
) -> None:
    out = await backend.topic(partitions=1)
    txn = await backend.transactional_producer(backend.name_for("txn"))
    plain = await backend.started_producer()
    committed_reader = await _reader(backend, out, COMMITTED)
    uncommitted_reader = await _reader(backend, out, UNCOMMITTED)
    tp = TopicPartition(out, 0)

    await txn.begin_transaction()
    await (await txn.send(out, b"in-txn"))
    await (await plain.send(out, b"plain-after"))

    assert _values(await backend.drain(uncommitted_reader, 2)) == [b"in-txn", b"plain-after"]
    # The plain record is committed data, but it lies past the last stable offset.
    assert await committed_reader.end_offsets([tp]) == {tp: 0}
    before = await committed_reader.getmany(timeout_ms=500)
    assert not any(before.values())

    await txn.commit_transaction()

    assert _values(await backend.drain(committed_reader, 2)) == [b"in-txn", b"plain-after"]
    assert await committed_reader.end_offsets([tp]) == {tp: 3}


async def test_a_newer_producer_fences_the_zombie_and_aborts_its_transaction(
    backend: Backend,
) -> None:
    source = await _input_with(backend, 4)
    out = await backend.topic(partitions=1)
    group = backend.name_for("group")
    transactional_id = backend.name_for("txn")
    zombie = await backend.transactional_producer(transactional_id)
    group_member = backend.consumer([source], group)
    await group_member.start()

    await zombie.begin_transaction()
    await (await zombie.send(out, b"from-zombie"))
    await zombie.send_offsets_to_transaction({TopicPartition(source, 0): 4}, group)

    heir = await backend.transactional_producer(transactional_id)

    with pytest.raises(ProducerFencedError):
        await zombie.commit_transaction()
    await heir.begin_transaction()
    await (await heir.send(out, b"from-heir"))
    await heir.send_offsets_to_transaction({TopicPartition(source, 0): 2}, group)
    await heir.commit_transaction()

    committed_reader = await _reader(backend, out, COMMITTED)
    assert _values(await backend.drain(committed_reader, 1)) == [b"from-heir"]
    assert await group_member.committed(TopicPartition(source, 0)) == 2
    with pytest.raises(ProducerFencedError):
        await zombie.begin_transaction()


async def test_transactional_calls_outside_a_transaction_are_refused(backend: Backend) -> None:
    out = await backend.topic(partitions=1)
    txn = await backend.transactional_producer(backend.name_for("txn"))

    with pytest.raises(TransactionStateError):
        await txn.send(out, b"no transaction")
    with pytest.raises(TransactionStateError):
        await txn.commit_transaction()
    await txn.begin_transaction()
    with pytest.raises(TransactionStateError):
        await txn.begin_transaction()
    await (await txn.send(out, b"inside"))
    await txn.commit_transaction()

    reader = await _reader(backend, out, COMMITTED)
    assert _values(await backend.drain(reader, 1)) == [b"inside"]


async def test_a_tail_read_counts_records_not_the_offsets_markers_take(backend: Backend) -> None:
    from core.streaming.topic_reader import read_topics

    out = await backend.topic(partitions=1)
    txn = await backend.transactional_producer(backend.name_for("txn"))
    for n in range(4):
        await txn.begin_transaction()
        await (await txn.send(out, f"r{n}".encode()))
        if n == 2:
            await txn.abort_transaction()
        else:
            await txn.commit_transaction()

    last_two = await read_topics(backend.settings, [out], tail=2)
    everything = await read_topics(backend.settings, [out])

    assert _values(everything) == [b"r0", b"r1", b"r3"]
    assert _values(last_two) == [b"r1", b"r3"], "8 offsets hold 3 committed records"
