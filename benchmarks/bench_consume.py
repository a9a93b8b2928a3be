"""Consume throughput: raw aiokafka ``getmany`` against ``MessageConsumer``, side by side.

One run, one broker, one topic, one machine. The script

1. creates a fresh topic (3 partitions by default) and preloads it with ``--messages``
   enveloped JSON events (~200 bytes each) through ``MessageProducer.send_many``
   (production is not timed);
2. measures, ``--repeat`` times with the variants interleaved, the consume rate of

   * ``raw``      -- ``AIOKafkaConsumer.getmany()``, ``orjson.loads`` of every value and
                     one ``commit()`` per fetched batch (the baseline of DESIGN.md §3);
   * ``default``  -- ``MessageConsumer`` with its default ``CommitPolicy``: ``fetch_batch()``,
                     ``await consumer.commit(message)`` for every message, a final ``flush()``;
   * ``sync``     -- ``MessageConsumer`` with ``CommitPolicy.per_message_sync()`` (one broker
                     round trip per message), on ``--sync-messages`` messages only;
   * ``raw-keep`` -- diagnostic, only when asked for with ``--variants``: ``raw`` holding
                     each batch's decoded values until the next fetch;

3. prints a table of the medians and writes ``benchmarks/results/consume-<date>.json``.

Every variant and repeat uses its own fresh consumer group, so each reads the topic from
the start. The clock starts as soon as the group assigned the partitions (the group join is
not timed) and stops after the last message was finished and its offset committed. After
the clock stops the committed offsets are read back and checked.

The benchmark only talks to a broker on 127.0.0.1/localhost, bounds every variant by
``--timeout`` seconds and deletes its topic at the end.

    source /tmp/dev-infra/env        # or start a broker: bash scripts/kafka.sh start
    .venv/bin/python benchmarks/bench_consume.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # allow `python benchmarks/bench_consume.py` from anywhere
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka import TopicPartition as KafkaTopicPartition  # noqa: E402
from aiokafka.abc import ConsumerRebalanceListener  # noqa: E402

from core.config.settings import RedpandaSettings  # noqa: E402
from core.streaming.clients import create_admin  # noqa: E402
from core.streaming.infrastructure.message_consumer import MessageConsumer  # noqa: E402
from core.streaming.infrastructure.message_producer import MessageProducer  # noqa: E402
from core.streaming.infrastructure.offset_tracker import CommitPolicy  # noqa: E402
from core.streaming.types import TopicSpec  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
MAX_POLL_RECORDS = 500  # MessageConsumer's default; the raw consumer uses the same
FETCH_TIMEOUT_MS = 100  # MessageConsumer's default fetch timeout
PRELOAD_CHUNK = 5_000
EVENT_TYPE = "trade"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AVGO")


# --------------------------------------------------------------------------- results


@dataclass
class Measurement:
    """One timed run of one variant."""

    variant: str
    messages: int
    seconds: float
    fetches: int
    commits: int
    cpu_seconds: float  # CPU time of this process while the clock ran
    gc_collections: int = 0
    gc_seconds: float = 0.0
    gc_by_generation: list[int] = field(default_factory=list)
    gc_seconds_by_generation: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6 if self.messages else 0.0


@dataclass
class VariantSummary:
    """The repeats of one variant and their medians."""

    variant: str
    description: str
    messages: int
    runs: list[Measurement] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(m.seconds for m in self.runs)

    @property
    def median_rate(self) -> float:
        return statistics.median(m.rate for m in self.runs)

    @property
    def median_cpu_us(self) -> float:
        return statistics.median(m.cpu_us_per_message for m in self.runs)

    @property
    def median_gc_seconds(self) -> float:
        return statistics.median(m.gc_seconds for m in self.runs)


DESCRIPTIONS = {
    "raw": "aiokafka getmany + orjson.loads + one commit() per fetched batch",
    "default": "MessageConsumer, default CommitPolicy, commit(message) each + final flush()",
    "sync": "MessageConsumer, CommitPolicy.per_message_sync()",
    "raw-keep": "diagnostic: raw, but each batch's decoded values held until the next fetch",
}
DEFAULT_VARIANTS = "raw,default,sync"


# --------------------------------------------------------------------------- helpers


def check_local(bootstrap: str) -> str:
    """Refuse anything but a broker on this machine."""
    hosts = [h.strip().rsplit(":", 1)[0] for h in bootstrap.split(",") if h.strip()]
    if not hosts or any(h not in LOCAL_HOSTS for h in hosts):
        raise SystemExit(f"--bootstrap must point at 127.0.0.1 or localhost, got {bootstrap!r}")
    return bootstrap


async def with_deadline(label: str, timeout_s: float, coro: Awaitable[Measurement]) -> Measurement:
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except TimeoutError:
        raise SystemExit(f"{label}: did not finish within {timeout_s:.0f} s") from None


def fresh_group(variant: str) -> str:
    return f"bench-consume-{variant}-{uuid.uuid4().hex[:12]}"


async def create_topic(config: RedpandaSettings, topic: str, partitions: int) -> None:
    admin = create_admin(config)
    await admin.start()
    try:
        await admin.create_topics([TopicSpec(topic, partitions, 1)])
    finally:
        await admin.close()


async def delete_topic(config: RedpandaSettings, topic: str) -> None:
    admin = create_admin(config)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def preload(config: RedpandaSettings, topic: str, count: int) -> dict[str, float]:
    """Produce ``count`` enveloped events; returns production stats (not part of the result)."""
    producer = MessageProducer(config, "bench")
    await producer.start()
    started = time.perf_counter()
    try:
        sent = 0
        while sent < count:
            chunk = min(PRELOAD_CHUNK, count - sent)
            items: list[tuple[str | bytes | None, Any]] = [
                (SYMBOLS[i % len(SYMBOLS)], {"sym": SYMBOLS[i % len(SYMBOLS)], "seq": i})
                for i in range(sent, sent + chunk)
            ]
            await producer.send_many(topic, items, EVENT_TYPE)
            sent += chunk
        await producer.flush()
    finally:
        await producer.stop()
    sample = producer.build_envelope({"sym": "AAPL", "seq": count // 2}, EVENT_TYPE)
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "value_bytes": len(orjson.dumps(sample)),
    }


# --------------------------------------------------------------------------- variants


class _AssignedListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        if set(assigned):
            self.assigned.set()


class Probe(Protocol):
    """Told when the clock starts and stops (a profiler, in ``profile_consume.py``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class GcWatch:
    """Counts garbage collections and the time they take while the clock runs."""

    def __init__(self) -> None:
        self.collections = 0
        self.seconds = 0.0
        self.by_generation = [0, 0, 0]
        self.seconds_by_generation = [0.0, 0.0, 0.0]
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            took = time.perf_counter() - self._began
            generation = info.get("generation", 0)
            self.collections += 1
            self.seconds += took
            self.by_generation[generation] += 1
            self.seconds_by_generation[generation] += took

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def summary(self) -> tuple[int, float, list[int], list[float]]:
        return (
            self.collections,
            self.seconds,
            list(self.by_generation),
            [round(s, 4) for s in self.seconds_by_generation],
        )

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


class _NoProbe:
    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


async def run_raw(
    bootstrap: str,
    topic: str,
    count: int,
    join_timeout_s: float,
    probe: Probe | None = None,
    *,
    keep: bool = False,
) -> Measurement:
    """Baseline: getmany, orjson.loads every value, one commit() per fetched batch.

    With ``keep`` (the ``raw-keep`` diagnostic) the decoded values of a batch stay alive
    until the next fetch, as in any consumer that hands a batch on before finishing it.
    """
    probe = probe or _NoProbe()
    variant = "raw-keep" if keep else "raw"
    listener = _AssignedListener()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id=f"bench-consume-{variant}",
        group_id=fresh_group(variant),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS,
    )
    await consumer.start()
    try:
        consumer.subscribe([topic], listener=listener)
        await asyncio.wait_for(listener.assigned.wait(), join_timeout_s)
        loads = orjson.loads
        held: list[Any] = []
        done = fetches = commits = 0
        watch = GcWatch()
        watch.start()
        probe.start()
        cpu_started = time.process_time()
        started = time.perf_counter()
        while done < count:
            batches = await consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS, max_records=MAX_POLL_RECORDS
            )
            if not batches:
                continue
            fetches += 1
            if keep:
                held = []
                for records in batches.values():
                    held.extend([loads(record.value) for record in records])
                    done += len(records)
            else:
                for records in batches.values():
                    for record in records:
                        loads(record.value)
                    done += len(records)
            await consumer.commit()
            commits += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        probe.stop()
        watch.stop()
        committed = 0
        for tp in consumer.assignment():
            committed += await consumer.committed(tp) or 0
        if committed != done:
            raise SystemExit(f"{variant}: committed {committed} offsets, consumed {done}")
        del held
        return Measurement(variant, done, elapsed, fetches, commits, cpu, *watch.summary())
    finally:
        await consumer.stop()


async def run_message_consumer(
    variant: str,
    config: RedpandaSettings,
    topic: str,
    count: int,
    policy: CommitPolicy | None,
    join_timeout_s: float,
    probe: Probe | None = None,
) -> Measurement:
    """``MessageConsumer``: fetch_batch, commit(message) for each, a final flush()."""
    probe = probe or _NoProbe()
    consumer = MessageConsumer(config, [topic], fresh_group(variant), commit_policy=policy)
    await consumer.start()
    try:
        if not await consumer.wait_for_assignment(join_timeout_s):
            raise SystemExit(f"{variant}: no partitions assigned within {join_timeout_s} s")
        done = fetches = 0
        watch = GcWatch()
        watch.start()
        probe.start()
        cpu_started = time.process_time()
        started = time.perf_counter()
        while done < count:
            messages = await consumer.fetch_batch()
            if not messages:
                continue
            fetches += 1
            for message in messages[: count - done]:
                await consumer.commit(message)
            done += min(len(messages), count - done)
        await consumer.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        probe.stop()
        watch.stop()
        committed = 0
        for tp in consumer.assignment():
            committed += await consumer.client.committed(tp) or 0
        if committed != done:
            raise SystemExit(f"{variant}: committed {committed} offsets, finished {done}")
        return Measurement(variant, done, elapsed, fetches, consumer.commits, cpu, *watch.summary())
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- main


def machine_info() -> dict[str, Any]:
    versions = {}
    for dist in ("aiokafka", "orjson", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "note": "shared 2-core development machine; other test runs may be active",
    }


def print_table(summaries: list[VariantSummary], repeat: int) -> None:
    raw = next(s for s in summaries if s.variant == "raw")
    header = (
        f"{'variant':<9} {'messages':>9} {'seconds':>9} {'msg/s':>10} {'ratio':>7} "
        f"{'cpu us/msg':>10} {'gc s':>6}  runs msg/s"
    )
    print(
        f"\nmedian of {repeat} repeat(s); ratio = median msg/s / median raw msg/s;\n"
        "cpu us/msg = this process's CPU time per message; "
        "gc s = seconds in garbage collection (both while the clock ran)"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        ratio = s.median_rate / raw.median_rate
        runs = ", ".join(f"{m.rate:,.0f}" for m in s.runs)
        print(
            f"{s.variant:<9} {s.messages:>9,} {s.median_seconds:>9.3f} "
            f"{s.median_rate:>10,.0f} {ratio:>7.3f} {s.median_cpu_us:>10.2f} "
            f"{s.median_gc_seconds:>6.3f}  [{runs}]"
        )
    print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
        help="broker host:port (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:29092)",
    )
    parser.add_argument("--messages", type=int, default=100_000, help="messages (default 100000)")
    parser.add_argument("--sync-messages", type=int, default=5_000, help="for `sync` (5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians reported (3)")
    parser.add_argument("--partitions", type=int, default=3, help="topic partitions (3)")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated subset of {','.join(DESCRIPTIONS)} (raw always runs); "
        f"default {DEFAULT_VARIANTS}",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed per variant run (300)"
    )
    parser.add_argument("--output", type=Path, help="result file (default results/consume-DATE)")
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the topic")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        help="diagnostic: gc.set_threshold(N) (generation 0) before measuring; default Python's",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="diagnostic: gc.collect() + gc.freeze() after the preload, before measuring",
    )
    args = parser.parse_args(argv)
    if args.messages <= 0 or args.sync_messages <= 0 or args.repeat <= 0:
        parser.error("--messages, --sync-messages and --repeat must be positive")
    args.sync_messages = min(args.sync_messages, args.messages)
    variants = {v.strip() for v in args.variants.split(",") if v.strip()} | {"raw"}
    unknown = variants - set(DESCRIPTIONS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    args.variants = [v for v in DESCRIPTIONS if v in variants]
    check_local(args.bootstrap)
    return args


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Preload, measure every variant ``args.repeat`` times, print the table; the result doc."""
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    started_at = dt.datetime.now(dt.UTC)
    topic = f"bench.consume.{started_at:%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    machine = machine_info()
    print(f"broker {args.bootstrap}  topic {topic}  partitions {args.partitions}")
    print(f"cpus {machine['cpus']}  loadavg {machine['loadavg_at_start']}")

    await create_topic(config, topic, args.partitions)
    try:
        production = await preload(config, topic, args.messages)
        print(
            f"preloaded {args.messages:,} messages (~{production['value_bytes']} B values) "
            f"in {production['seconds']:.1f} s (not measured)"
        )
        if args.gc_threshold is not None:
            gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        counts = {
            "raw": args.messages,
            "raw-keep": args.messages,
            "default": args.messages,
            "sync": args.sync_messages,
        }
        summaries = {v: VariantSummary(v, DESCRIPTIONS[v], counts[v]) for v in args.variants}
        runners: dict[str, Callable[[], Awaitable[Measurement]]] = {
            "raw": lambda: run_raw(args.bootstrap, topic, counts["raw"], args.timeout),
            "raw-keep": lambda: run_raw(
                args.bootstrap, topic, counts["raw"], args.timeout, keep=True
            ),
            "default": lambda: run_message_consumer(
                "default", config, topic, counts["default"], None, args.timeout
            ),
            "sync": lambda: run_message_consumer(
                "sync", config, topic, counts["sync"], CommitPolicy.per_message_sync(), args.timeout
            ),
        }
        for rep in range(1, args.repeat + 1):
            for variant in args.variants:  # interleaved: drift on the shared box hits all alike
                label = f"repeat {rep}/{args.repeat} {variant}"
                result = await with_deadline(label, args.timeout, runners[variant]())
                summaries[variant].runs.append(result)
                print(
                    f"  {label:<22} {result.messages:>8,} msgs {result.seconds:>8.3f} s "
                    f"{result.rate:>10,.0f} msg/s  cpu={result.cpu_us_per_message:.2f}us/msg "
                    f"fetches={result.fetches} "
                    f"commits={result.commits} gc={result.gc_collections}"
                    f"/{result.gc_seconds:.3f}s"
                )
    finally:
        if not args.keep_topic:
            with contextlib.suppress(Exception):
                await delete_topic(config, topic)

    ordered = [summaries[v] for v in args.variants]
    print_table(ordered, args.repeat)
    raw = summaries["raw"]
    paired = {
        s.variant: [m.rate / r.rate for m, r in zip(s.runs, raw.runs, strict=True)] for s in ordered
    }
    result_doc: dict[str, Any] = {
        "benchmark": "bench_consume",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "bootstrap": args.bootstrap,
        "topic": topic,
        "partitions": args.partitions,
        "repeat": args.repeat,
        "max_poll_records": MAX_POLL_RECORDS,
        "gc": {"threshold": list(gc.get_threshold()), "frozen": args.gc_freeze},
        "production": production,
        "machine": machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "target": {"variant": "default", "min_ratio_to_raw": 0.8},
        "variants": [
            {
                "variant": s.variant,
                "description": s.description,
                "messages": s.messages,
                "median_seconds": round(s.median_seconds, 4),
                "median_msgs_per_s": round(s.median_rate, 1),
                "median_cpu_us_per_message": round(s.median_cpu_us, 3),
                "median_gc_seconds": round(s.median_gc_seconds, 4),
                "ratio_to_raw": round(s.median_rate / raw.median_rate, 4),
                "paired_ratio_median": round(statistics.median(paired[s.variant]), 4),
                "runs": [
                    asdict(m)
                    | {
                        "msgs_per_s": round(m.rate, 1),
                        "cpu_us_per_message": round(m.cpu_us_per_message, 3),
                    }
                    for m in s.runs
                ],
            }
            for s in ordered
        ],
    }
    if "default" in summaries:
        ratio = summaries["default"].median_rate / raw.median_rate
        result_doc["target"] |= {"ratio": round(ratio, 4), "met": ratio >= 0.8}
        verdict = "MET" if ratio >= 0.8 else "MISSED"
        print(f"default / raw = {ratio:.3f} -> target >= 0.80 {verdict}")
    return result_doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result_doc = asyncio.run(run_benchmark(args))
    output: Path = args.output or RESULTS_DIR / f"consume-{result_doc['started_at'][:10]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(result_doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
