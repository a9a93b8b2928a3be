"""Record batches built byte by byte, for records no well-behaved producer would write.

A header key that is not valid UTF-8 cannot be produced with aiokafka (it encodes
header keys from ``str``), but other clients write one and Kafka stores it. These
helpers build a v2 batch with placeholder keys, swap the placeholders for raw bytes,
fix the CRC, and send it with a plain ``ProduceRequest``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as Builder
from aiokafka.record.util import calc_crc32c

RawHeaders = Sequence[tuple[bytes, bytes | None]]


def raw_batch(records: Sequence[tuple[bytes | None, bytes | None, RawHeaders]]) -> bytes:
    """A v2 batch of ``(key, value, headers)`` whose header keys are raw bytes."""
    builder = Builder(2, 0, 0, -1, -1, -1, 64 * 1024 * 1024)
    swaps: list[tuple[bytes, bytes]] = []
    for index, (key, value, headers) in enumerate(records):
        named: list[tuple[str, bytes | None]] = []
        for h, (name, data) in enumerate(headers):
            try:
                named.append((name.decode("utf-8"), data))
                continue
            except UnicodeDecodeError:
                pass
            placeholder = f"~{index:04d}~{h:04d}~".ljust(len(name), "~")
            assert len(placeholder) == len(name), "header key too short to swap"
            swaps.append((placeholder.encode(), name))
            named.append((placeholder, data))
        builder.append(index, None, key, value, named)
    buffer = bytes(builder.build())
    for placeholder, name in swaps:
        assert buffer.count(placeholder) == 1
        buffer = buffer.replace(placeholder, name)
    out = bytearray(buffer)
    crc = calc_crc32c(bytes(out[Builder.ATTRIBUTES_OFFSET :]))
    struct.pack_into(">I", out, Builder.CRC_OFFSET, crc)
    return bytes(out)


async def produce_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> None:
    """Send one raw batch to ``topic``/``partition`` with acks=all; raise on a broker error."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        response = await client.send(leader, request)
        for _topic, partitions in response.topics:
            for part in partitions:
                assert part[1] == 0, f"broker refused the batch with error code {part[1]}"
    finally:
        await client.close()


def compressed(batch: bytes, codec: int = 1) -> bytes:
    """``batch`` (uncompressed v2) with its records compressed by ``codec`` (1 = gzip)."""
    from aiokafka.codec import gzip_encode

    assert codec == 1, "only gzip is needed here"
    header = bytearray(batch[:61])
    body = gzip_encode(batch[61:])
    attributes = struct.unpack_from(">h", header, 21)[0] | codec
    struct.pack_into(">h", header, 21, attributes)
    struct.pack_into(">i", header, 8, len(header) - 12 + len(body))
    out = header + body
    crc = calc_crc32c(bytes(out[Builder.ATTRIBUTES_OFFSET :]))
    struct.pack_into(">I", out, Builder.CRC_OFFSET, crc)
    return bytes(out)


def with_base_offset(batch: bytes, base_offset: int) -> bytes:
    """``batch`` moved to ``base_offset`` (the CRC does not cover the offset)."""
    out = bytearray(batch)
    struct.pack_into(">q", out, 0, base_offset)
    return bytes(out)
