"""Key-ordered concurrency with an I/O-bound handler: throughput per setting, order checked.

One run, one broker, one topic. The script

1. creates a fresh topic (3 partitions) and preloads ``--messages`` enveloped events
   (default 2,000) on ``--keys`` keys (default 200; key ``k<i % keys>``, payload
   ``{"k": i % keys, "seq": i}``), produced with ``MessageProducer.send_many`` (not timed);
2. runs a builder service whose handler awaits ``--sleep-ms`` (default 5 ms, an I/O call)
   with ``ordering="key"`` and ``concurrency`` 1, 4, 16 and 64, and, for reference,
   ``ordering="partition"`` (one lane per partition), ``--repeat`` times interleaved;
   dedup (real Redis), metrics and correlation are on as in a deployed service
   (``--no-dedup`` switches dedup off);
3. checks in every run that each key's events were handled in the order of the log (read
   back after the preload) and each exactly once, prints a table of the medians and writes
   ``benchmarks/results/concurrency-<date>.json``.

The clock is the one of ``bench_pipeline.py``: from partition assignment to the last
message final and its offset committed. Alongside each rate the table shows the bound the
lanes allow: a lane is one ordered queue with one worker, so a run cannot be faster than
its busiest lane (messages on it x the handler's sleep); in ``key`` mode a message's lane
is a hash of (topic, partition, key) modulo ``concurrency``, so 200 keys do not spread
evenly over 64 lanes. Lanes are told apart by the name of the task running the handler.

Only 127.0.0.1/localhost broker and Redis; every run bounded by ``--timeout``; the topic,
its dead-letter topic and the run's dedup keys are deleted.

    source /tmp/dev-infra/env
    .venv/bin/python benchmarks/bench_concurrency.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import os
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for _path in (ROOT, BENCH_DIR):  # allow `python benchmarks/bench_concurrency.py` from anywhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka import TopicPartition as KafkaTopicPartition  # noqa: E402
from bench_consume import RESULTS_DIR, check_local, create_topic, machine_info  # noqa: E402
from bench_pipeline import (  # noqa: E402
    Handler,
    Tracker,
    bounded,
    build_service,
    check_local_redis,
    code_version,
    delete_keys,
    delete_topics,
    drive_service,
)

from core.config.settings import RedpandaSettings  # noqa: E402
from core.streaming.infrastructure.message_producer import MessageProducer  # noqa: E402

SETTINGS: list[tuple[str, str, int]] = [  # (label, ordering, concurrency)
    ("key/1", "key", 1),
    ("key/4", "key", 4),
    ("key/16", "key", 16),
    ("key/64", "key", 64),
    ("partition", "partition", 1),
]


@dataclass
class Observed:
    """What the handler saw in one run."""

    by_key: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    by_lane: Counter[str] = field(default_factory=Counter)
    active: int = 0
    peak: int = 0


@dataclass
class ConcurrencyRun:
    label: str
    messages: int
    seconds: float
    peak_concurrent: int
    lanes_used: int
    busiest_lane: int
    order_ok: bool
    detail: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def sleeping_handler(observed: Observed, sleep_s: float) -> Any:
    """A handler factory: await ``sleep_s``, record key order, lane and concurrency."""

    def factory(tracker: Tracker) -> Handler:
        by_key, by_lane = observed.by_key, observed.by_lane

        async def handle(event: dict[str, Any]) -> None:
            observed.active += 1
            observed.peak = max(observed.peak, observed.active)
            task = asyncio.current_task()
            by_lane[task.get_name() if task is not None else "?"] += 1
            await asyncio.sleep(sleep_s)
            data = event["data"]
            by_key[data["k"]].append(data["seq"])
            observed.active -= 1
            tracker.on_handled()

        return handle

    return factory


def check_order(observed: Observed, stored: dict[int, list[int]]) -> list[str]:
    """Problems found: keys handled out of log order, events lost or handled twice."""
    problems = []
    for k, seqs in stored.items():
        got = observed.by_key.get(k, [])
        if got != seqs:
            if sorted(got) == sorted(seqs):
                problems.append(f"key {k}: out of order")
            else:
                problems.append(f"key {k}: {len(got)} events handled, {len(seqs)} in the log")
    return problems


async def stored_order(
    bootstrap: str, topic: str, partitions: int, count: int, timeout_s: float
) -> dict[int, list[int]]:
    """Per key, the ``seq`` of its events in log (offset) order: what the handler must see."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    order: dict[int, list[int]] = defaultdict(list)
    try:
        consumer.assign([KafkaTopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    data = orjson.loads(record.value)["data"]
                    order[data["k"]].append(data["seq"])
                    seen += 1
        if seen != count:
            raise SystemExit(f"read {seen} of {count} preloaded events back")
    finally:
        await consumer.stop()
    return dict(order)


async def run_setting(
    args: argparse.Namespace,
    topic: str,
    stored: dict[int, list[int]],
    label: str,
    ordering: str,
    concurrency: int,
) -> ConcurrencyRun:
    observed = Observed()
    run = build_service(
        f"bench-concurrency-{label.replace('/', '-')}",
        args.bootstrap,
        args.redis_url,
        topic,
        args.messages,
        sleeping_handler(observed, args.sleep_ms / 1000),
        ordering=ordering,
        concurrency=concurrency,
        dedup=args.dedup,
        **({"max_in_flight": args.max_in_flight} if args.max_in_flight else {}),
    )
    try:
        detail = await drive_service(run, args.timeout)
    finally:
        deleted = await delete_keys(args.redis_url, f"dedup:{run.name}:*")
    detail["redis_keys_deleted"] = deleted
    problems = check_order(observed, stored)
    detail["order_problems"] = problems[:20]
    busiest = max(observed.by_lane.values())
    return ConcurrencyRun(
        label,
        args.messages,
        run.window.seconds,
        observed.peak,
        len(observed.by_lane),
        busiest,
        not problems,
        detail,
    )


async def preload_keyed(config: RedpandaSettings, topic: str, count: int, keys: int) -> float:
    producer = MessageProducer(config, "bench")
    await producer.start()
    started = time.perf_counter()
    try:
        items: list[tuple[str | bytes | None, Any]] = [
            (f"k{i % keys}", {"k": i % keys, "seq": i}) for i in range(count)
        ]
        await producer.send_many(topic, items, "bench.keyed")
        await producer.flush()
    finally:
        await producer.stop()
    return round(time.perf_counter() - started, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
        help="broker host:port (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:29092)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:26379/0"),
        help="Redis for dedup (default: $REDIS_URL or redis://127.0.0.1:26379/0)",
    )
    parser.add_argument("--messages", type=int, default=2_000, help="messages (2000)")
    parser.add_argument("--keys", type=int, default=200, help="distinct keys (200)")
    parser.add_argument("--sleep-ms", type=float, default=5.0, help="handler's await (5 ms)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians reported (3)")
    parser.add_argument("--partitions", type=int, default=3, help="topic partitions (3)")
    parser.add_argument("--no-dedup", dest="dedup", action="store_false", help="dedup off")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per run (120)"
    )
    parser.add_argument(
        "--settings",
        default=",".join(label for label, _, _ in SETTINGS),
        help="comma-separated subset of the settings (default: all; key/1 always runs)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        help="diagnostic: the flow's max_in_flight (default: the settings' default, 1000)",
    )
    parser.add_argument("--output", type=Path, help="default results/concurrency-DATE.json")
    args = parser.parse_args(argv)
    chosen = {x.strip() for x in args.settings.split(",") if x.strip()} | {"key/1"}
    unknown = chosen - {label for label, _, _ in SETTINGS}
    if unknown:
        parser.error(f"unknown settings: {sorted(unknown)}")
    args.settings = [row for row in SETTINGS if row[0] in chosen]
    if min(args.messages, args.keys, args.repeat) <= 0 or args.sleep_ms < 0:
        parser.error("--messages, --keys and --repeat must be positive")
    check_local(args.bootstrap)
    check_local_redis(args.redis_url)
    return args


def print_table(rows: list[dict[str, Any]], repeat: int) -> None:
    header = (
        f"{'setting':<10} {'lanes':>5} {'seconds':>8} {'msg/s':>7} {'spread':>7} "
        f"{'x key/1':>7} {'lane bound':>10} {'of bound':>8} {'peak':>5} {'order':>6}  runs msg/s"
    )
    print(
        f"\nmedian of {repeat} repeat(s); lanes = lanes that got messages; lane bound = "
        "messages / (busiest lane's messages x sleep), median;\npeak = most handlers "
        "awaiting at once; order = per-key order held in every repeat"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        runs = ", ".join(f"{x:,.0f}" for x in r["rates"])
        print(
            f"{r['setting']:<10} {r['lanes_used']:>5} {r['median_seconds']:>8.3f} "
            f"{r['median_msgs_per_s']:>7,.0f} {r['spread']:>6.0%} {r['speedup_vs_key1']:>7.2f} "
            f"{r['lane_bound_msgs_per_s']:>10,.0f} {r['of_lane_bound']:>8.0%} "
            f"{r['peak_concurrent']:>5} {'ok' if r['order_ok'] else 'BROKEN':>6}  [{runs}]"
        )
    print()


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    started_at = dt.datetime.now(dt.UTC)
    topic = f"bench.concurrency.{started_at:%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    machine = machine_info()
    print(f"broker {args.bootstrap}  redis {urlsplit(args.redis_url).netloc}  topic {topic}")
    print(f"cpus {machine['cpus']}  loadavg {machine['loadavg_at_start']}  (shared machine)")
    runs: dict[str, list[ConcurrencyRun]] = {label: [] for label, _, _ in args.settings}
    await create_topic(config, topic, args.partitions)
    try:
        produced_s = await preload_keyed(config, topic, args.messages, args.keys)
        stored = await stored_order(
            args.bootstrap, topic, args.partitions, args.messages, args.timeout
        )
        print(
            f"preloaded {args.messages:,} messages on {args.keys} keys in {produced_s:.1f} s; "
            f"handler awaits {args.sleep_ms:g} ms; dedup {'on' if args.dedup else 'off'}"
        )
        for rep in range(1, args.repeat + 1):
            for label, ordering, concurrency in args.settings:
                gc.collect()
                name = f"repeat {rep}/{args.repeat} {label}"
                r = await bounded(
                    name,
                    args.timeout,
                    run_setting(args, topic, stored, label, ordering, concurrency),
                )
                runs[label].append(r)
                print(
                    f"  {name:<20} {r.seconds:>7.3f} s {r.rate:>7,.0f} msg/s lanes={r.lanes_used}"
                    f" busiest={r.busiest_lane} peak={r.peak_concurrent} order_ok={r.order_ok}"
                )
    finally:
        with contextlib.suppress(Exception):
            await delete_topics(config, [topic, f"{topic}.dlq"])

    sleep_s = args.sleep_ms / 1000
    key1 = statistics.median(r.rate for r in runs["key/1"])
    rows = []
    for label, ordering, concurrency in args.settings:
        rs = runs[label]
        rates = [r.rate for r in rs]
        median = statistics.median(rates)
        bounds = [r.messages / (r.busiest_lane * sleep_s) if sleep_s else 0.0 for r in rs]
        bound = statistics.median(bounds)
        rows.append(
            {
                "setting": label,
                "ordering": ordering,
                "concurrency": concurrency,
                "messages": args.messages,
                "lanes_used": statistics.median(r.lanes_used for r in rs),
                "median_seconds": round(statistics.median(r.seconds for r in rs), 4),
                "median_msgs_per_s": round(median, 1),
                "rates": [round(x, 1) for x in rates],
                "spread": round((max(rates) - min(rates)) / median, 4),
                "speedup_vs_key1": round(median / key1, 3),
                "lane_bound_msgs_per_s": round(bound, 1),
                "of_lane_bound": round(median / bound, 4) if bound else 0.0,
                "peak_concurrent": max(r.peak_concurrent for r in rs),
                "order_ok": all(r.order_ok for r in rs),
                "runs": [
                    {
                        "seconds": round(r.seconds, 4),
                        "msgs_per_s": round(r.rate, 1),
                        "lanes_used": r.lanes_used,
                        "busiest_lane": r.busiest_lane,
                        "peak_concurrent": r.peak_concurrent,
                        "order_ok": r.order_ok,
                        "detail": r.detail,
                    }
                    for r in rs
                ],
            }
        )
    print_table(rows, args.repeat)
    broken = [r["setting"] for r in rows if not r["order_ok"]]
    print("per-key order held in every run" if not broken else f"ORDER BROKEN in {broken}")
    doc = {
        "benchmark": "bench_concurrency",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "bootstrap": args.bootstrap,
        "redis": urlsplit(args.redis_url).netloc,
        "topic": topic,
        "partitions": args.partitions,
        "messages": args.messages,
        "keys": args.keys,
        "sleep_ms": args.sleep_ms,
        "dedup": args.dedup,
        "max_in_flight": args.max_in_flight or "default (1000)",
        "repeat": args.repeat,
        "machine": machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "timed": "from partition assignment to the last message final and its offset committed",
        "settings": rows,
        "order_ok": not broken,
    }
    if broken:
        raise SystemExit(f"per-key order broken in {broken}: {orjson.dumps(doc).decode()[:2000]}")
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = code_version()
    doc = asyncio.run(run_benchmark(args))
    doc["code"] = code
    output: Path = args.output or RESULTS_DIR / f"concurrency-{doc['started_at'][:10]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
