"""End-to-end latency at a steady rate: from produce to handler done, p50 and p99.

A ``MessageProducer`` (our default: idempotent, acks=all, 5 ms linger) publishes
``--rate`` envelopes a second for ``--seconds`` to a fresh topic, each carrying the
wall-clock time it was handed to the producer. A builder service in a separate
process (dedup on real Redis, metrics, correlation, checkpointed commits) handles
them; its handler records the time from that stamp to its own end. The first
``--warmup`` seconds are left out. Only 127.0.0.1/localhost; bounded; the topic is
deleted.

    bash benchmarks/peers.sh --latency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import (
    ROOT,
    check_local,
    create_topic,
    delete_topic,
    server_arguments,
    settings_of,
    write_results,
)

from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.orchestration.lifecycle_coordinator import serving_gc
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder


async def child(args: argparse.Namespace) -> None:
    """The consuming service: prints one JSON line of latencies (ms) when done."""
    latencies: list[float] = []
    done = asyncio.Event()
    expected = int(args.rate * args.seconds)

    async def handle(event: dict[str, Any]) -> None:
        data = event["data"]
        latencies.append((time.time() - data["sent"]) * 1000)
        if data["n"] == expected - 1:
            done.set()

    group = f"bench-latency-{uuid.uuid4().hex[:6]}"
    builder = StreamServiceBuilder(group, settings=settings_of(args)).ensure_topics(False)
    if args.dedup:
        builder.with_redis()
    service = builder.add_consumer_handler([args.topic], group, handle).build()
    await service.start()
    print("ready", flush=True)
    try:
        with serving_gc():  # as `tradestream run` serves
            await asyncio.wait_for(done.wait(), args.seconds + 60)
    finally:
        await service.stop()
    skip = int(args.rate * args.warmup)
    print(json.dumps(latencies[skip:]), flush=True)


async def produce(args: argparse.Namespace) -> None:
    producer = MessageProducer(settings_of(args).redpanda, "bench-latency")
    await producer.start()
    try:
        interval = 1 / args.rate
        started = time.perf_counter()
        total = int(args.rate * args.seconds)
        for n in range(total):
            delay = started + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.enqueue(args.topic, f"k{n % 64}", {"n": n, "sent": time.time()})
        await producer.flush()
    finally:
        await producer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = server_arguments(__doc__)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dedup", dest="dedup", action="store_false", help="dedup off")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return
    check_local(args)
    runs = []
    for repeat in range(args.repeat):
        args.topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topic(args.bootstrap, args.topic, args.partitions))
        command = [
            sys.executable, __file__, "--child", "--topic", args.topic, "--rate", str(args.rate),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--bootstrap", args.bootstrap, "--redis-url", args.redis_url,
            *([] if args.dedup else ["--no-dedup"]),
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(3)  # the group settles before the stream starts
            asyncio.run(produce(args))
            out, _ = proc.communicate(timeout=args.seconds + 120)
        finally:
            if proc.poll() is None:
                proc.kill()
            asyncio.run(delete_topic(args.bootstrap, args.topic))
        latencies = json.loads(out.strip().splitlines()[-1])
        row = {
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies),
            "count": len(latencies),
        }
        runs.append(row)
        print(f"  repeat {repeat + 1}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")
    p50 = statistics.median(r["p50_ms"] for r in runs)
    p99 = statistics.median(r["p99_ms"] for r in runs)
    print(
        f"\n{args.rate:.0f} msg/s for {args.seconds:.0f} s, median of {args.repeat}: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (p99 range "
        f"{min(r['p99_ms'] for r in runs):.2f}-{max(r['p99_ms'] for r in runs):.2f})"
    )
    write_results(args, "latency", {"runs": runs})


if __name__ == "__main__":
    main()
