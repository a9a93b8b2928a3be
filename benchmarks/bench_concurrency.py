"""Key-ordered concurrency with an I/O-bound handler: speedup per setting, order checked.

A topic of ``--partitions`` partitions is preloaded with ``--messages`` envelopes on
``--keys`` keys. A builder service with dedup on (real Redis), metrics and
correlation handles them with a handler that awaits ``--sleep-ms`` (an I/O call),
with ``ordering="key"`` and ``concurrency`` 1, 4, 16 and 64, ``--repeat`` times
interleaved. Every run checks that each key's events were handled in log order and
exactly once. The speedup is the rate against ``key/1``; the target is at least
0.8 x min(concurrency, keys).

The clock starts at the first message handled and stops at the last. Only brokers
and Redis on 127.0.0.1/localhost; bounded by ``--timeout``; the topic is deleted.

    bash benchmarks/peers.sh --concurrency
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import (
    check_local,
    create_topic,
    delete_topic,
    server_arguments,
    settings_of,
    write_results,
)

from core.streaming.orchestration.lifecycle_coordinator import serving_gc
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder


async def preload(bootstrap: str, topic: str, partitions: int, count: int, keys: int) -> None:
    import orjson
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            value = orjson.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "type": "bench.keyed",
                    "timestamp": "2026-12-01T00:00:00Z",
                    "source": "bench",
                    "data": {"k": i % keys, "seq": i},
                }
            )
            futures.append(await producer.send(topic, value, key=f"k{i % keys}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def run_setting(args: argparse.Namespace, topic: str, concurrency: int) -> dict[str, Any]:
    settings = settings_of(args)
    seen: dict[int, list[int]] = {}
    done = asyncio.Event()
    clock: dict[str, float] = {}
    count = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal count
        if not clock:
            clock["start"] = time.perf_counter()
        await asyncio.sleep(args.sleep_ms / 1000)
        data = event["data"]
        seen.setdefault(data["k"], []).append(data["seq"])
        count += 1
        if count == args.messages:
            clock["end"] = time.perf_counter()
            done.set()

    group = f"bench-conc-{concurrency}-{uuid.uuid4().hex[:6]}"
    service = (
        StreamServiceBuilder(group, settings=settings)
        .ensure_topics(False)
        .with_redis()
        .add_consumer_handler(
            [topic],
            group,
            handle,
            ordering="key",
            concurrency=concurrency,
            max_in_flight=max(1_000, args.messages),
        )
        .build()
    )
    await service.start()
    try:
        with serving_gc():  # as `tradestream run` serves
            await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        await service.stop()
    ordered = all(seqs == sorted(seqs) for seqs in seen.values())
    exactly_once = sum(len(v) for v in seen.values()) == args.messages
    return {
        "concurrency": concurrency,
        "seconds": clock["end"] - clock["start"],
        "ordered": ordered,
        "exactly_once": exactly_once,
    }


async def main_async(args: argparse.Namespace) -> None:
    topic = f"bench-conc-{uuid.uuid4().hex[:8]}"
    await preload(args.bootstrap, topic, args.partitions, args.messages, args.keys)
    settings = [int(c) for c in args.concurrency.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in settings}
    try:
        for _ in range(args.repeat):
            for c in settings:
                result = await run_setting(args, topic, c)
                runs[c].append(result)
                print(
                    f"  concurrency {c:3d}: {args.messages / result['seconds']:8.0f} msg/s "
                    f"ordered={result['ordered']} exactly_once={result['exactly_once']}",
                    flush=True,
                )
    finally:
        await delete_topic(args.bootstrap, topic)
    base = args.messages / statistics.median(r["seconds"] for r in runs[1])
    print(f"\n{args.messages} messages, {args.keys} keys, {args.sleep_ms} ms handler\n")
    print("| concurrency | msg/s | speedup | target (0.8 x min(c, keys)) | order held |")
    print("| ---: | ---: | ---: | ---: | --- |")
    table = []
    for c, results in runs.items():
        rate = args.messages / statistics.median(r["seconds"] for r in results)
        target = 0.8 * min(c, args.keys)
        ok = all(r["ordered"] and r["exactly_once"] for r in results)
        table.append({"concurrency": c, "msg_per_s": rate, "speedup": rate / base})
        print(f"| {c} | {rate:,.0f} | {rate / base:.1f}x | {target:.1f}x | {ok} |")
    write_results(args, "concurrency", {"table": table, "runs": runs})


def main() -> None:
    parser = server_arguments(__doc__)
    parser.add_argument("--messages", type=int, default=2_000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    check_local(args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
