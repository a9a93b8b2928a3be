"""The Kafka adapter's tolerant record parsing, driven through aiokafka's own fetch classes.

No broker: a fetch response is the concatenated bytes of record batches, handed to
the same ``MemoryRecords``/``PartitionRecords`` names aiokafka's fetcher uses.
"""

from __future__ import annotations

import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.errors import CorruptRecordException

from core.streaming.kafka import KafkaConsumerClient, records
from core.streaming.types import UnreadableRecord
from tests.raw_batches import compressed, raw_batch, with_base_offset

TP = KafkaTopicPartition("t", 0)
BAD = b"\xc3\x28-not-utf8"


def _response() -> bytes:
    first = raw_batch(
        [(b"k0", b"v0", [(b"a", b"1")]), (b"k1", b"v1", [(BAD, b"x")]), (b"k2", b"v2", [])]
    )
    second = with_base_offset(
        compressed(raw_batch([(b"k3", None, [(BAD, None)]), (b"k4", b"v4", [(b"n", None)])])), 3
    )
    third = with_base_offset(raw_batch([(b"k5", b"v5", [(b"ok", b"5")])]), 5)
    return first + second + third


def _fetch(data: bytes, fetch_offset: int = 0) -> list[object]:
    partition_records = fetcher.PartitionRecords(
        TP,
        fetcher.MemoryRecords(data),
        [],
        fetch_offset,
        None,
        None,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    return list(partition_records)


def test_the_adapter_installs_the_tolerant_fetch_path() -> None:
    assert KafkaConsumerClient is not None
    assert records.installed()


def test_records_that_do_not_decode_become_placeholders_at_their_offsets() -> None:
    with records.tolerant_fetching():
        got = _fetch(_response())
    assert [r.offset for r in got] == [0, 1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    bad = [r for r in got if isinstance(r, UnreadableRecord)]
    assert [r.offset for r in bad] == [1, 3]
    assert all("header 0 key is not valid UTF-8" in r.client_error for r in bad)
    assert all(r.size and r.timestamp > 0 for r in bad)
    good = {r.offset: r for r in got if not isinstance(r, UnreadableRecord)}  # type: ignore[attr-defined]
    assert good[0].headers == (("a", b"1"),)
    assert (good[2].key, good[2].value) == (b"k2", b"v2")
    assert good[4].headers == (("n", None),)
    assert good[5].headers == (("ok", b"5"),)


def test_a_fetch_that_starts_inside_a_batch_skips_what_lies_before() -> None:
    with records.tolerant_fetching():
        got = _fetch(_response(), fetch_offset=2)
    assert [r.offset for r in got] == [2, 3, 4, 5]  # type: ignore[attr-defined]
    assert isinstance(got[1], UnreadableRecord)


def test_consumers_made_outside_the_adapter_keep_aiokafkas_behaviour() -> None:
    with pytest.raises(UnicodeDecodeError):
        _fetch(_response())


def test_a_batch_whose_framing_is_broken_still_raises() -> None:
    batch = bytearray(raw_batch([(b"k0", b"v0", [(BAD, b"x")])]))
    batch[61] = 0x7E  # the record's length prefix now runs past the batch
    from aiokafka.record.util import calc_crc32c

    crc = calc_crc32c(bytes(batch[21:]))
    batch[17:21] = crc.to_bytes(4, "big")
    with records.tolerant_fetching(), pytest.raises((CorruptRecordException, ValueError)):
        _fetch(bytes(batch))


def test_a_readable_batch_hands_out_aiokafkas_own_records() -> None:
    data = raw_batch([(b"k", b"v", [(b"h", b"1")])])
    with records.tolerant_fetching():
        tolerant = _fetch(data)
    plain = _fetch(data)
    assert tolerant == plain
    assert type(tolerant[0]) is type(plain[0])
