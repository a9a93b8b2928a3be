"""What the Kafka adapter costs over raw aiokafka: fetching and producing, side by side.

The adapter adds two things on the hot path: tolerant record parsing (a generator step
per fetched record, ``core/streaming/kafka/records.py``) and a relayed acknowledgement
per send (``core/streaming/kafka/producer.py``). The script measures, ``--repeat``
times with the variants interleaved,

* ``fetch-raw``      -- ``AIOKafkaConsumer.getmany()`` over a preloaded topic;
* ``fetch-adapter``  -- ``KafkaConsumerClient.getmany()`` (``create_consumer``) over it;
* ``send-raw``       -- ``AIOKafkaProducer.send()`` of ``--messages`` records, acks gathered;
* ``send-adapter``   -- ``KafkaProducerClient.send()`` (``create_producer``), acks gathered;

and prints msg/s and CPU µs per message (process CPU while the clock ran), medians
with min-max. The clock runs after the consumer has its partitions (the group join is
not timed) and after the producer started. Both consumers decode nothing; both
producers are idempotent, acks=all, linger 5 ms. Only a broker on 127.0.0.1/localhost
is used; the topics are deleted.

    .venv/bin/python benchmarks/bench_clients.py --bootstrap 127.0.0.1:29092
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from core.config.settings import RedpandaSettings  # noqa: E402
from core.streaming.clients import (  # noqa: E402
    ConsumerOptions,
    create_admin,
    create_consumer,
    create_producer,
)
from core.streaming.types import TopicSpec  # noqa: E402

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
VALUE = b'{"id":"0190f3a2-7c1e-7b52-9d1e-5f0c2a9b1e77","type":"trade","data":{"p":101.25}}' * 2


Timing = tuple[int, float, float]  # messages, wall seconds, CPU seconds


async def _timed(run: Callable[[], Awaitable[int]]) -> Timing:
    cpu, wall = time.process_time(), time.perf_counter()
    count = await run()
    return count, time.perf_counter() - wall, time.process_time() - cpu


async def _assigned(assignment: Callable[[], Any]) -> None:
    for _ in range(6_000):  # at most a minute
        if assignment():
            return
        await asyncio.sleep(0.01)


async def _fetch_raw(bootstrap: str, topic: str, total: int) -> Timing:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        await _assigned(consumer.assignment)
        return await _timed(
            lambda: _drain(lambda: consumer.getmany(timeout_ms=200, max_records=500), total)
        )
    finally:
        await consumer.stop()


async def _fetch_adapter(settings: RedpandaSettings, topic: str, total: int) -> Timing:
    consumer = create_consumer(
        settings, [topic], f"bench-{uuid.uuid4().hex[:8]}", ConsumerOptions()
    )
    await consumer.start()
    try:
        await _assigned(consumer.assignment)
        return await _timed(
            lambda: _drain(lambda: consumer.getmany(timeout_ms=200, max_records=500), total)
        )
    finally:
        await consumer.stop()


async def _drain(getmany: Callable[[], Awaitable[Any]], total: int) -> int:
    count = 0
    deadline = time.monotonic() + 120
    while count < total and time.monotonic() < deadline:
        for records in (await getmany()).values():
            count += len(records)
    return count


async def _send_raw(bootstrap: str, topic: str, total: int) -> Timing:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        return await _timed(lambda: _send_all(producer.send, topic, total))
    finally:
        await producer.stop()


async def _send_adapter(settings: RedpandaSettings, topic: str, total: int) -> Timing:
    producer = create_producer(settings)
    await producer.start()
    try:
        return await _timed(lambda: _send_all(producer.send, topic, total))
    finally:
        await producer.stop()


async def _send_all(send: Callable[..., Awaitable[Any]], topic: str, total: int) -> int:
    acks = [await send(topic, VALUE) for _ in range(total)]
    await asyncio.gather(*acks)
    return len(acks)


def _report(name: str, runs: list[Timing]) -> str:
    rates = [n / wall for n, wall, _ in runs]
    cpus = [cpu / n * 1e6 for n, _, cpu in runs]
    return (
        f"{name:<14} {statistics.median(rates):>10,.0f} msg/s ({min(rates):,.0f}-{max(rates):,.0f})"
        f"  {statistics.median(cpus):6.2f} µs CPU/msg ({min(cpus):.2f}-{max(cpus):.2f})"
    )


async def main(args: argparse.Namespace) -> None:
    hosts = {h.rsplit(":", 1)[0] for h in args.bootstrap.split(",")}
    if not hosts <= LOCAL_HOSTS:
        raise SystemExit(f"refusing non-local broker {args.bootstrap}")
    settings = RedpandaSettings(bootstrap_servers=args.bootstrap)
    admin = create_admin(settings)
    await admin.start()
    fetch_topic = f"bench-clients-{uuid.uuid4().hex[:8]}"
    send_topic = f"{fetch_topic}-send"
    await admin.create_topics([TopicSpec(fetch_topic, 3), TopicSpec(send_topic, 3)])
    try:
        preload = create_producer(settings)
        await preload.start()
        acks = [
            await preload.send(fetch_topic, VALUE, partition=i % 3) for i in range(args.messages)
        ]
        await asyncio.gather(*acks)
        await preload.stop()
        variants: dict[str, Callable[[], Awaitable[Timing]]] = {
            "fetch-raw": lambda: _fetch_raw(args.bootstrap, fetch_topic, args.messages),
            "fetch-adapter": lambda: _fetch_adapter(settings, fetch_topic, args.messages),
            "send-raw": lambda: _send_raw(args.bootstrap, send_topic, args.messages),
            "send-adapter": lambda: _send_adapter(settings, send_topic, args.messages),
        }
        results: dict[str, list[Timing]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, run in variants.items():
                results[name].append(await run())
        print(f"{args.messages:,} messages of {len(VALUE)} bytes, {args.repeat} repeats")
        for name, runs in results.items():
            print(_report(name, runs))
    finally:
        await admin.delete_topics([fetch_topic, send_topic])
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:29092")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
