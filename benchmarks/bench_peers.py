"""Consume throughput and CPU per message: our flows against raw aiokafka and Python peers.

One invocation measures, side by side on one broker and one Redis, each variant as
its own subprocess (so CPU time is that process's alone, client threads included),
``--repeat`` times with the variants interleaved, and reports the median and the
spread. Every variant reads the same preloaded topic with a fresh consumer group,
and handles every message with a trivial handler (it counts).

Variants:

* ``raw-interval`` -- ``AIOKafkaConsumer.getmany(500)`` + ``orjson.loads``, a commit
  every second (the cadence of our default checkpoint);
* ``raw-sync``     -- the same with a synchronous commit after every fetched batch;
* ``raw-librdkafka``, ``librdkafka-records`` -- the raw loop on confluent-kafka,
  without and with records our layers could read (``bench_librdkafka.py``);
* ``quix``         -- Quix Streams 3.x ``Application``, at-least-once, default
  checkpointing (librdkafka);
* ``faststream``   -- FastStream 0.7 default subscriber (acks on receipt: at-most-once);
* ``faststream-ack`` -- FastStream 0.7 with ``AckPolicy.ACK`` (ack after processing);
* ``ours``         -- a ``StreamServiceBuilder`` service: metrics, correlation,
  checkpointed commits, no dedup, per-message handler;
* ``ours-gc-default`` -- ``ours`` with Python's default garbage-collector threshold;
* ``ours-dedup``   -- the same with dedup on the real Redis;
* ``ours-batch``   -- dedup on, with a batch handler (``add_batch_handler``).

Our variants set up the garbage collector once the service has started as
``tradestream run`` does (``serving_gc``: freeze, generation-0 threshold 10,000),
except ``ours-gc-default``. The clock starts at the first message a variant sees
(group join and start-up are not timed) and stops at the last one handled; a final
commit follows, untimed.
For the dedup variants the Redis server's time in commands is reported per
message too: ``INFO commandstats`` over the commands clients sent (every one but
``INFO``; the commands a script runs are inside its own time and not counted
twice), and the main thread's CPU time from ``INFO cpu``.
``--empty-partition`` preloads one partition of four with nothing, the case
where a caught-up partition can stall the others.

Peers come from ``benchmarks/requirements-peers.txt`` (installed by
``bash benchmarks/peers.sh``, into ``.venv-bench``). Only brokers and Redis on
127.0.0.1/localhost are accepted; every run is bounded by ``--timeout``; topics are
deleted at the end.

    bash benchmarks/peers.sh --messages 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    ROOT,
    check_local,
    create_topic,
    delete_topic,
    server_arguments,
    write_results,
)
from bench_librdkafka import child_librdkafka

VARIANTS = (
    "raw-interval",
    "raw-sync",
    "raw-librdkafka",
    "librdkafka-records",
    "quix",
    "faststream",
    "faststream-ack",
    "ours",
    "ours-gc-default",
    "ours-dedup",
    "ours-batch",
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _envelope(n: int) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "id": f"{uuid.uuid4()}",
            "type": "bench.tick",
            "timestamp": "2026-12-01T00:00:00.000000Z",
            "source": "bench",
            "correlation_id": None,
            "causation_id": None,
            "schema_version": 1,
            "data": {"n": n, "symbol": "RELIANCE", "price": 2874.5 + n % 100, "qty": 10},
        }
    )


# --------------------------------------------------------------------------- children


class Clock:
    """Counts messages; starts at the first, stops at the last."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.started = 0.0
        self.cpu_started = 0.0
        self.elapsed = 0.0
        self.cpu = 0.0
        self.done = asyncio.Event()

    def tick(self, n: int = 1) -> None:
        if self.seen == 0:
            self.started = time.perf_counter()
            self.cpu_started = _cpu()
        self.seen += n
        if self.seen >= self.count and not self.done.is_set():
            self.elapsed = time.perf_counter() - self.started
            self.cpu = _cpu() - self.cpu_started
            self.done.set()


async def child_raw(args: argparse.Namespace, clock: Clock, sync: bool) -> None:
    import orjson
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    last_commit = time.monotonic()
    try:
        while not clock.done.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value)
                clock.tick(len(records))
            if sync and batches:
                await consumer.commit()
            elif time.monotonic() - last_commit >= 1.0:
                last_commit = time.monotonic()
                await consumer.commit()
        await consumer.commit()
    finally:
        await consumer.stop()


def child_quix(args: argparse.Namespace, clock: Clock) -> None:
    from quixstreams import Application

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="json")
    sdf = app.dataframe(topic)

    def count(value: Any) -> None:
        clock.seen += 1
        if clock.seen == 1:
            clock.started = time.perf_counter()
            clock.cpu_started = _cpu()
        if clock.seen >= clock.count and not clock.elapsed:
            clock.elapsed = time.perf_counter() - clock.started
            clock.cpu = _cpu() - clock.cpu_started
            app.stop()

    sdf.update(count)
    app.run()


async def child_faststream(args: argparse.Namespace, clock: Clock, ack: bool) -> None:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(args.bootstrap, logger=None)
    options: dict[str, Any] = {"group_id": args.group, "auto_offset_reset": "earliest"}
    if ack:
        options["ack_policy"] = AckPolicy.ACK

    @broker.subscriber(args.topic, **options)
    async def handle(body: dict[str, Any]) -> None:
        clock.tick()

    await broker.start()
    try:
        await asyncio.wait_for(clock.done.wait(), args.timeout)
    finally:
        await broker.stop()


async def child_ours(args: argparse.Namespace, clock: Clock, variant: str) -> None:
    from bench_common import settings_of

    from core.streaming.orchestration.lifecycle_coordinator import (
        SERVING_GC_THRESHOLD,
        serving_gc,
    )
    from core.streaming.patterns.stream_service_builder import StreamServiceBuilder

    settings = settings_of(args)

    async def handle(event: dict[str, Any]) -> None:
        clock.tick()

    async def handle_batch(events: list[dict[str, Any]]) -> None:
        clock.tick(len(events))

    builder = StreamServiceBuilder(f"bench-{args.group}", settings=settings).ensure_topics(False)
    if variant == "ours-batch":
        builder.with_redis().add_batch_handler([args.topic], args.group, handle_batch)
    else:
        if variant == "ours-dedup":
            builder.with_redis()
        builder.add_consumer_handler([args.topic], args.group, handle)
    service = builder.build()
    await service.start()
    # The garbage collector as `tradestream run` sets it once its services have
    # started; ``ours-gc-default`` keeps Python's default threshold (freeze only).
    threshold = None if variant == "ours-gc-default" else SERVING_GC_THRESHOLD
    try:
        with serving_gc(threshold):
            await asyncio.wait_for(clock.done.wait(), args.timeout)
    finally:
        await service.stop()


def run_child(args: argparse.Namespace) -> None:
    clock = Clock(args.count)
    variant = args.child
    if variant == "quix":
        child_quix(args, clock)
    elif variant in ("raw-librdkafka", "librdkafka-records"):
        child_librdkafka(args, clock, records=variant == "librdkafka-records")
    elif variant.startswith("raw"):
        asyncio.run(child_raw(args, clock, sync=variant == "raw-sync"))
    elif variant.startswith("faststream"):
        asyncio.run(child_faststream(args, clock, ack=variant == "faststream-ack"))
    else:
        asyncio.run(child_ours(args, clock, variant))
    print(json.dumps({"seconds": clock.elapsed, "cpu": clock.cpu, "count": clock.seen}))


# --------------------------------------------------------------------------- parent


async def preload(bootstrap: str, topic: str, partitions: int, messages: int, empty: bool) -> None:
    """A new topic with ``messages`` envelopes, spread evenly (one partition left empty)."""
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await producer.start()
    try:
        used = partitions - 1 if empty else partitions
        futures = [
            await producer.send(topic, _envelope(n), key=str(n).encode(), partition=n % used)
            for n in range(messages)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


#: Commands the dedup scripts run inside Redis: their time is part of the script's
#: own (EVALSHA) time in ``INFO commandstats``, so it is not counted again.
_SCRIPT_INNER = {
    "cmdstat_time", "cmdstat_smismember", "cmdstat_hmget", "cmdstat_hset", "cmdstat_hget",
    "cmdstat_pexpire", "cmdstat_sadd", "cmdstat_hdel",
}  # fmt: skip


def redis_usage(redis_url: str) -> tuple[int, float]:
    """Microseconds Redis spent in the commands clients sent, and its main thread's CPU seconds.

    ``INFO`` is left out, and so are the commands run inside scripts (already in
    the script's time).
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
        cpu = client.info("cpu")
    finally:
        client.close()
    usec = sum(
        int(values["usec"])
        for name, values in stats.items()
        if name != "cmdstat_info" and name not in _SCRIPT_INNER
    )
    return usec, float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def run_variant(args: argparse.Namespace, variant: str, topic: str) -> dict[str, Any]:
    group = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    before = redis_usage(args.redis_url)
    command = [
        sys.executable, __file__, "--child", variant, "--topic", topic, "--group", group,
        "--count", str(args.messages), "--bootstrap", args.bootstrap,
        "--redis-url", args.redis_url, "--timeout", str(args.timeout),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=args.timeout + 60, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    after = redis_usage(args.redis_url)
    result["redis_usec"] = after[0] - before[0]
    result["redis_cpu"] = after[1] - before[1]
    result["variant"] = variant
    return result


def summarize(runs: list[dict[str, Any]], messages: int) -> dict[str, Any]:
    rates = [messages / r["seconds"] for r in runs]
    cpu = [r["cpu"] / messages * 1e6 for r in runs]
    redis_us = [r["redis_usec"] / messages for r in runs]
    redis_cpu = [r.get("redis_cpu", 0.0) / messages * 1e6 for r in runs]
    return {
        "msg_per_s": statistics.median(rates),
        "msg_per_s_min": min(rates),
        "msg_per_s_max": max(rates),
        "cpu_us_per_msg": statistics.median(cpu),
        "cpu_us_min": min(cpu),
        "cpu_us_max": max(cpu),
        "redis_us_per_msg": statistics.median(redis_us),
        "redis_cpu_us_per_msg": statistics.median(redis_cpu),
    }


def main() -> None:
    parser = server_arguments(__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--empty-partition", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--group", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    check_local(args)
    variants = [v for v in args.variants.split(",") if v]
    topic = f"bench-peers-{uuid.uuid4().hex[:8]}"
    asyncio.run(
        preload(args.bootstrap, topic, args.partitions, args.messages, args.empty_partition)
    )
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for repeat in range(args.repeat):
            for variant in variants:
                result = run_variant(args, variant, topic)
                runs[variant].append(result)
                rate = args.messages / result["seconds"]
                print(
                    f"  repeat {repeat + 1} {variant:15s} {rate:10.0f} msg/s "
                    f"{result['cpu'] / args.messages * 1e6:6.2f} µs CPU/msg",
                    flush=True,
                )
    finally:
        asyncio.run(delete_topic(args.bootstrap, topic))
    table = {v: summarize(r, args.messages) for v, r in runs.items()}
    print(
        f"\n{args.messages} messages, {args.partitions} partitions"
        f"{' (one empty)' if args.empty_partition else ''}, median of {args.repeat}\n"
    )
    print("| variant | msg/s (min-max) | CPU µs/msg (min-max) | Redis µs/msg | Redis CPU µs/msg |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, row in table.items():
        print(
            f"| {variant} | {row['msg_per_s']:,.0f} ({row['msg_per_s_min']:,.0f}-"
            f"{row['msg_per_s_max']:,.0f}) | {row['cpu_us_per_msg']:.2f} "
            f"({row['cpu_us_min']:.2f}-{row['cpu_us_max']:.2f}) | {row['redis_us_per_msg']:.2f} | "
            f"{row['redis_cpu_us_per_msg']:.2f} |"
        )
    name = "peers-empty" if args.empty_partition else "peers"
    write_results(args, name, {"table": table, "runs": runs})


if __name__ == "__main__":
    main()
