"""Diagnostic record (not a maintained benchmark): where `full`'s wall time goes off-CPU.

Runs bench_pipeline's `full` / `no-dedup` service variants (same builder, same clock,
same checks) on a freshly preloaded topic and, around them, counts:

* every KafkaConsumerClient.getmany call by duration, and whether it returned records;
* the event loop's time blocked in epoll (nothing runnable: waiting on the broker or Redis);
* the awaited time of DeduplicationManager.claim_many / mark_done_many;
* with ``--trace``, for every getmany of 50 ms or more: each partition's fetch position and
  high watermark, which partitions had a fetched result buffered, and whether a fetch
  request to the broker was in flight (aiokafka internals, read only), as they were
  when the call began.

`--fetch-max-wait-ms N` builds the services' AIOKafkaConsumer with fetch_max_wait_ms=N
(aiokafka's default is 500) by wrapping the class the adapter imports; nothing under
core/ is edited. Usage (from the repository root, dev broker and Redis sourced):

    D=benchmarks/results/pipeline-fetch-stall-2026-11-26b
    .venv/bin/python $D/diag_fetch_stall.py --variants full,no-dedup,full --fetch-max-wait-ms 500
"""

import argparse
import asyncio
import collections
import functools
import gc
import os
import selectors
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # benchmarks/results/<this dir>/ -> repository
for _path in (ROOT, ROOT / "benchmarks"):
    sys.path.insert(0, str(_path))

import bench_pipeline as bp  # noqa: E402
from bench_consume import create_topic, preload  # noqa: E402

import core.streaming.clients as clients  # noqa: E402
from core.config.settings import RedpandaSettings  # noqa: E402
from core.streaming.reliability.deduplication_manager import DeduplicationManager  # noqa: E402

stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])


def add(label: str, seconds: float) -> None:
    s = stats[label]
    s[0] += 1
    s[1] += seconds


def wrap_async(cls, name, label):
    orig = getattr(cls, name)

    async def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return await orig(*a, **k)
        finally:
            add(label, time.perf_counter() - t)

    setattr(cls, name, wrapper)


orig_getmany = clients.KafkaConsumerClient.getmany
TRACE: list[str] = []  # with --trace: one line per getmany of 50 ms or more
TRACE_ON = [False]
T0 = [0.0]


def fetch_state(consumer) -> str:
    """Per partition: fetch position / high watermark; buffered results; brokers in flight."""
    fetcher = consumer._fetcher
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return "(no assignment yet)"
    positions = ", ".join(
        f"p{tp.partition} {assignment.state_value(tp).position}/{consumer.highwater(tp)}"
        for tp in sorted(assignment.tps)
    )
    buffered = sorted(tp.partition for tp in fetcher._records)
    return f"[{positions}] buffered={buffered} fetch_in_flight_to={sorted(fetcher._in_flight)}"


async def getmany(self, timeout_ms=0, max_records=None):
    before = fetch_state(self._consumer) if TRACE_ON[0] else ""
    t = time.perf_counter()
    result = await orig_getmany(self, timeout_ms, max_records)
    d = time.perf_counter() - t
    n = sum(len(v) for v in result.values())
    if d >= 0.050 and TRACE_ON[0]:
        TRACE.append(
            f"  t={t - T0[0]:6.2f}s getmany took {d * 1000:4.0f} ms, {n} records; before: {before}"
        )
    bucket = "<10ms" if d < 0.010 else "10-50ms" if d < 0.050 else ">=50ms"
    add(f"getmany {bucket} {'empty' if n == 0 else 'with records'}", d)
    return result


clients.KafkaConsumerClient.getmany = getmany
wrap_async(DeduplicationManager, "claim_many", "claim_many awaited")
wrap_async(DeduplicationManager, "mark_done_many", "mark_done_many awaited")
orig_select = selectors.EpollSelector.select


def select(self, timeout=None):
    t = time.perf_counter()
    try:
        return orig_select(self, timeout)
    finally:
        add("event loop blocked in epoll", time.perf_counter() - t)


selectors.EpollSelector.select = select


async def main(args: argparse.Namespace) -> None:
    TRACE_ON[0] = args.trace
    if args.fetch_max_wait_ms is not None:
        clients.AIOKafkaConsumer = functools.partial(
            clients.AIOKafkaConsumer, fetch_max_wait_ms=args.fetch_max_wait_ms
        )
    ns = argparse.Namespace(
        bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:26379/0"),
        timeout=120.0,
    )
    config = RedpandaSettings(bootstrap_servers=ns.bootstrap)
    topic = f"bench.pipeline.diag.{os.getpid()}"
    await create_topic(config, topic, args.partitions)
    rates = collections.defaultdict(list)
    try:
        await preload(config, topic, args.messages)
        print(
            f"topic {topic}, {args.partitions} partitions, fetch_max_wait_ms "
            f"{args.fetch_max_wait_ms or 'aiokafka default (500)'}"
        )
        for variant in args.variants.split(","):
            stats.clear()
            TRACE.clear()
            gc.collect()  # as bench_pipeline does before each run
            T0[0] = time.perf_counter()
            r = await bp.run_service(variant, ns, topic, args.messages)
            rates[variant].append(r.rate)
            print(
                f"{variant}: {r.seconds:.3f} s wall, {r.cpu_seconds:.3f} s CPU, "
                f"{r.rate:,.0f} msg/s, GC {r.gc_seconds:.3f} s, "
                f"backpressure pauses {r.detail['backpressure_pauses']}"
            )
            for k, (n, s) in sorted(stats.items()):
                print(f"   {k:<34} n={n:>6.0f} total={s:7.3f} s")
            if args.trace:
                print("\n".join(TRACE))
    finally:
        await bp.delete_topics(config, [topic, f"{topic}.dlq"])
    for v, rs in rates.items():
        print(
            f"{v}: median {statistics.median(rs):,.0f} msg/s over {len(rs)} runs "
            f"({', '.join(f'{x:,.0f}' for x in rs)})"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="full,no-dedup,full")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--fetch-max-wait-ms", type=int)
    p.add_argument("--trace", action="store_true", help="print the state around slow getmany")
    asyncio.run(main(p.parse_args()))
