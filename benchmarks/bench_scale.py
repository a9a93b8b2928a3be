"""Scale: throughput of 1, 2 and 3 instances of one service in one group; rebalance pauses.

    python -m benchmarks.bench_scale --bootstrap B --redis-url U [--replication 3]

Instances are separate processes of the chaos workload (``tests/chaos/workload.py``:
a ``StreamServiceBuilder`` service with dedup in Redis), here with no handler
sleep, no output event and no side-effect log, so the framework's own cost is
what is measured.

**Throughput.** A fresh topic (``--partitions``) is preloaded with ``--messages``
events (not timed). For each instance count a fresh group starts that many
processes; the group's committed offsets are sampled every 0.25 s, and the rate
is taken from one second after the last member joined (its ready marker) to 90%
of the messages committed, so joins, rebalances and the tail are left out. CPU
per message is the workers' user + system CPU time (``/proc/<pid>/stat``) over
the same window, divided by the messages committed in it.

**Rebalance.** Two instances consume a steady feed (``--feed-rate``) with the
side-effect log on; then a third joins, and later one leaves with SIGTERM
(graceful). For each change: the longest gap between two consecutive handled
messages of one partition in the 20 s after it (the pause a partition saw),
against the same in a quiet 10 s before; and, for a join, the time from the
process start to its first handled message.

Writes ``benchmarks/results/scale-<date>.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from core.config.settings import RedpandaSettings
from core.streaming.infrastructure.message_producer import MessageProducer
from tests.chaos.harness import Feeder, Pool
from tests.chaos.scenarios import create_topics
from tests.chaos.verify import read_all, read_effects

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _env(
    args: argparse.Namespace, topic: str, group: str, run_dir: Path, effects: bool
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADESTREAM_", "CHAOS_"))}
    env.update(
        TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=args.bootstrap,
        TRADESTREAM_REDPANDA__TOPIC_REPLICATION_FACTOR=str(args.replication),
        TRADESTREAM_REDIS__URL=args.redis_url,
        CHAOS_RUN_DIR=str(run_dir),
        CHAOS_INPUT=topic,
        CHAOS_OUTPUT="",
        CHAOS_GROUP=group,
        CHAOS_HANDLER_MS="0",
        CHAOS_EFFECTS="1" if effects else "0",
    )
    return env


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    """Committed messages of ``group`` (0 while its coordinator is not there yet)."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return 0
    return sum(max(0, meta.offset) for meta in offsets.values())


async def _preload(args: argparse.Namespace, topic: str) -> None:
    producer = MessageProducer(RedpandaSettings(bootstrap_servers=args.bootstrap), "scale-loader")
    try:
        for start in range(0, args.messages, 5000):
            items = [
                (str(n % 256), {"n": n}) for n in range(start, min(args.messages, start + 5000))
            ]
            await producer.send_many(topic, items, "scale.in")
    finally:
        await producer.stop()


async def throughput(
    args: argparse.Namespace, topic: str, instances: int, base: Path
) -> dict[str, Any]:
    group = f"scale.{uuid.uuid4().hex[:8]}"
    run_dir = base / group
    run_dir.mkdir(parents=True)
    pool = Pool(_env(args, topic, group, run_dir, effects=False), run_dir)
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    samples: list[tuple[float, int, float]] = []
    try:
        await asyncio.gather(*(pool.spawn(wait=False) for _ in range(instances)))
        pids = [i.pid for i in pool.instances]
        ready = asyncio.ensure_future(asyncio.gather(*(i.wait_ready() for i in pool.instances)))
        all_ready = 0.0
        deadline = time.monotonic() + args.timeout
        while True:
            if not all_ready and ready.done():
                ready.result()
                all_ready = time.monotonic()
            done = await _committed(admin, group)
            samples.append((time.monotonic(), done, _cpu_s(pids)))
            if done >= args.messages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
    finally:
        await admin.close()
        await pool.stop_all()
    # From the first sample one second after every member joined (the group's last
    # rebalance) to 90% committed: joins and the tail are left out.
    lo = next(s for s in samples if s[0] >= all_ready + 1.0)
    hi = next((s for s in samples if s[1] >= 0.9 * args.messages), samples[-1])
    msgs = hi[1] - lo[1]
    return {
        "instances": instances,
        "rate": msgs / (hi[0] - lo[0]) if hi[0] > lo[0] else 0.0,
        "measured_messages": msgs,
        "cpu_ms_per_1000": 1000 * (hi[2] - lo[2]) / msgs * 1000 if msgs else 0.0,
        "all_committed": samples[-1][1] >= args.messages,
    }


def _max_gap(times: list[float], start: float, end: float) -> float:
    window = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in itertools.pairwise(window))


async def _handled_by_partition(
    args: argparse.Namespace, topic: str, run_dir: Path
) -> list[list[float]]:
    """First-handled times of each partition's events, per partition."""
    partition_of = {}
    for record in await read_all(args.bootstrap, topic):
        partition_of[str(orjson.loads(record.value)["id"])] = record.partition  # type: ignore[attr-defined]
    times: dict[int, list[float]] = {}
    for event_id, lines in read_effects(run_dir).items():
        handled = [t for kind, t in lines if kind == "E"]
        if handled and event_id in partition_of:
            times.setdefault(partition_of[event_id], []).append(min(handled))
    return [sorted(v) for v in times.values()]


async def rebalance(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    topic = f"scale.reb.{uuid.uuid4().hex[:8]}"
    await create_topics_for(args, topic)
    group = f"{topic}.g"
    run_dir = base / group
    run_dir.mkdir(parents=True)
    pool = Pool(_env(args, topic, group, run_dir, effects=True), run_dir)
    await pool.spawn()
    await pool.spawn()
    feeder = Feeder(args.bootstrap, topic, args.feed_rate, poison_every=0)
    feed = asyncio.ensure_future(feeder.run(75))
    events: list[tuple[str, float, str]] = []
    try:
        await asyncio.sleep(15)
        quiet = time.monotonic()
        await asyncio.sleep(10)
        joined_at = time.monotonic()
        joiner = await pool.spawn(wait=False)
        events.append(("join", joined_at, joiner.name))
        await asyncio.sleep(25)
        leaver = pool.running()[0]
        left_at = time.monotonic()
        await leaver.terminate()
        events.append(("leave", left_at, leaver.name))
        await feed
        await asyncio.sleep(3)
    finally:
        feed.cancel()
        await pool.stop_all()
    per_partition = await _handled_by_partition(args, topic, run_dir)

    def longest(start: float, end: float) -> float:
        return max(_max_gap(times, start, end) for times in per_partition)

    out: dict[str, Any] = {"topic": topic, "baseline_max_gap_s": longest(quiet, quiet + 10)}
    for kind, at, name in events:
        entry = {"max_gap_s": longest(at, at + 20)}
        if kind == "join":
            own = [
                float(line.split()[2])
                for path in run_dir.glob(f"effects-{name}-*.log")
                for line in path.read_text().splitlines()
            ]
            entry["first_handled_after_s"] = min(own) - at if own else float("inf")
        out[kind] = entry
    return out


async def create_topics_for(args: argparse.Namespace, topic: str) -> None:
    from tests.chaos.harness import Infra

    await create_topics(
        Infra(args.bootstrap, args.redis_url, args.replication), [topic], args.partitions
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--replication", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--feed-rate", type=float, default=300.0)
    parser.add_argument("--rebalance-repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    for host in args.bootstrap.split(","):
        if not host.startswith(("127.0.0.1:", "localhost:")):
            raise SystemExit("only brokers on 127.0.0.1/localhost")
    base = ROOT / ".infra" / "bench-scale"
    base.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]

    topic = f"scale.{uuid.uuid4().hex[:8]}"
    await create_topics_for(args, topic)
    await _preload(args, topic)
    counts = [int(c) for c in args.instances.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    for _ in range(args.repeat):
        for c in counts:  # interleaved, so drift in machine load hits every count alike
            runs[c].append(await throughput(args, topic, c, base))
    rebalances = [await rebalance(args, base) for _ in range(args.rebalance_repeat)]
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic, *(r["topic"] for r in rebalances)])
    finally:
        await admin.close()

    print(
        f"throughput ({args.messages} messages, {args.partitions} partitions, repeat {args.repeat})"
    )
    print("instances  msg/s (median, runs)            CPU ms per 1000 msgs (median)")
    for c in counts:
        rates = [r["rate"] for r in runs[c]]
        cpu = statistics.median(r["cpu_ms_per_1000"] for r in runs[c])
        each = ", ".join(f"{x:.0f}" for x in rates)
        print(f"{c:>9}  {statistics.median(rates):>8.0f} ({each})  {cpu:>10.0f}")
    print("rebalance (longest gap between handled messages of one partition, s)")
    for r in rebalances:
        print(
            f"  quiet {r['baseline_max_gap_s']:.2f}  join {r['join']['max_gap_s']:.2f} "
            f"(joiner's first message after {r['join']['first_handled_after_s']:.2f})  "
            f"leave {r['leave']['max_gap_s']:.2f}"
        )
    out = ROOT / "benchmarks" / "results" / f"scale-{dt.date.today().isoformat()}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "load_average_at_start": load,
                "load_average_at_end": os.getloadavg()[0],
                "throughput": runs,
                "rebalance": rebalances,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
