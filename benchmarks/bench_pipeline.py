"""End-to-end flow throughput: raw aiokafka ``getmany`` against a full builder service.

The speed bar of DESIGN.md §3: with dedup, metrics, correlation and batched commits all on,
at least 70% of raw aiokafka ``getmany`` throughput on the same broker, measured side by
side in one run. The script

1. creates a fresh topic (3 partitions by default) and preloads it with ``--messages``
   enveloped JSON events (~220-byte values), exactly as ``bench_consume.py`` does
   (production is not timed);
2. measures, ``--repeat`` times with the variants interleaved, the rate of

   * ``raw``      -- ``AIOKafkaConsumer.getmany()``, ``orjson.loads`` of every value, one
                     ``commit()`` per fetched batch (``bench_consume.run_raw``, the baseline);
   * ``full``     -- a service from ``StreamServiceBuilder``: a trivial async handler (it
                     counts), dedup ON against the real Redis (``with_redis()``), metrics on,
                     correlation on (always), dead letters on, default commit policy
                     (500 finished / 1 s), default ordering (``partition``);
   * ``no-dedup`` -- the same service with ``dedup=False`` (the cost of dedup);
   * ``plan``     -- the plan's loop for reference: ``MessageConsumer`` with
                     ``CommitPolicy.per_message_sync()`` and two Redis calls per message
                     (``EXISTS``, then ``SET ... EX`` after the handler: redis-py's spelling
                     of the deprecated ``SETEX``), on ``--plan-messages``;

3. prints a table of the medians and writes ``benchmarks/results/pipeline-<date>.json``.

What is timed (every variant alike): the clock starts when the consumer group has assigned
the partitions (the group join, service start-up, topic and Redis connection set-up are not
timed) and stops when the last of the variant's messages is final and its offset committed.
For the services, "final" is the layer's own notion (handled, done mark written to Redis
when dedup is on, reported finished to the consumer); once the handler has seen the last
message the script asks the layer to write its buffered done marks
(``layer.flush_done()``) and, after the last message is final, commits
(``consumer.flush()``), as ``ServiceOrchestrator.stop()`` would; without that the clock
would also count the end-of-stream timers (the 100 ms fetch timeout before the last done
marks are written, and up to the 1 s commit interval) that a continuous stream does not
pay. Committed offsets are read back afterwards and checked against the count.

Each variant and repeat uses a fresh consumer group and, for the services, a unique
service name, so the dedup keys (``dedup:<service>:<group>:<event id>``) of one run are
never seen by another. The script deletes those keys (and the ``plan`` variant's) from
Redis after each run, outside the clock.

The benchmark only talks to a broker and a Redis on 127.0.0.1/localhost, bounds every run
by ``--timeout`` seconds and deletes its topics (the consumed one and the dead-letter topic
the builder ensures) at the end.

Two other modes, for finding where the time goes:

* ``--profile full,no-dedup`` -- no table: each listed service variant runs once under
  pyinstrument and once under cProfile, switched on only while the clock runs; reports
  in ``benchmarks/results/pipeline-profile-<date>/``;
* ``--micro`` -- no broker: the per-message CPU of each step of the reliability path in
  isolation (best of ``--micro-rounds``, GC off), and the cost per id of the dedup calls
  against the real Redis for batches of 50, 200 and 500 ids (claims and done marks as
  ``DeduplicationManager`` makes them, ids packed in one argument, and done marks as one
  script call with one key per id); ``results/pipeline-micro-<date>.json``.

``--gc-freeze`` calls ``gc.collect(); gc.freeze()`` once after the preload, before the
timed variants, as ``tradestream run`` does once its services have started.

    source /tmp/dev-infra/env
    .venv/bin/python benchmarks/bench_pipeline.py
    .venv/bin/python benchmarks/bench_pipeline.py --gc-freeze
    .venv/bin/python benchmarks/bench_pipeline.py --profile full,no-dedup
    .venv/bin/python benchmarks/bench_pipeline.py --micro
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for _path in (ROOT, BENCH_DIR):  # allow `python benchmarks/bench_pipeline.py` from anywhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import orjson  # noqa: E402
from bench_consume import (  # noqa: E402
    LOCAL_HOSTS,
    RESULTS_DIR,
    GcWatch,
    Probe,
    check_local,
    create_topic,
    machine_info,
    preload,
    run_raw,
)
from pydantic import SecretStr  # noqa: E402

from core.config.settings import (  # noqa: E402
    ObservabilitySettings,
    RedisSettings,
    RedpandaSettings,
    ReliabilitySettings,
    Settings,
)
from core.streaming.clients import Redis, create_admin, create_redis  # noqa: E402
from core.streaming.infrastructure.consumed_message import ConsumedMessage  # noqa: E402
from core.streaming.infrastructure.message_consumer import MessageConsumer  # noqa: E402
from core.streaming.infrastructure.offset_tracker import CommitPolicy  # noqa: E402
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator  # noqa: E402
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder  # noqa: E402
from core.streaming.reliability.deduplication_manager import (  # noqa: E402
    ClaimResult,
    DeduplicationManager,
)

T = TypeVar("T")

DEDUP_TTL_S = 3600  # the plan's TTL for its SETEX; the services use the settings' default
TARGET_RATIO = 0.70

DESCRIPTIONS = {
    "raw": "aiokafka getmany + orjson.loads + one commit() per fetched batch",
    "full": "builder service: dedup on (real Redis), metrics, correlation, default commits",
    "no-dedup": "the same service with dedup=False",
    "plan": "MessageConsumer per-message sync commit + EXISTS and SET EX per message",
}
DEFAULT_VARIANTS = "raw,full,no-dedup,plan"


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    """One timed run of one variant."""

    variant: str
    messages: int
    seconds: float
    cpu_seconds: float
    commits: int
    gc_collections: int = 0
    gc_seconds: float = 0.0
    gc_by_generation: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6 if self.messages else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "msgs_per_s": round(self.rate, 1),
            "cpu_us_per_message": round(self.cpu_us_per_message, 3),
        }


@dataclass
class Summary:
    """The repeats of one variant and their medians."""

    variant: str
    description: str
    messages: int
    runs: list[Run] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def median_rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def min_rate(self) -> float:
        return min(r.rate for r in self.runs)

    @property
    def max_rate(self) -> float:
        return max(r.rate for r in self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-repeat rates."""
        return (self.max_rate - self.min_rate) / self.median_rate if self.median_rate else 0.0

    @property
    def median_cpu_us(self) -> float:
        return statistics.median(r.cpu_us_per_message for r in self.runs)

    @property
    def median_gc_seconds(self) -> float:
        return statistics.median(r.gc_seconds for r in self.runs)


# --------------------------------------------------------------------------- helpers


def check_local_redis(url: str) -> str:
    """Refuse any Redis but one on this machine."""
    host = urlsplit(url).hostname
    if urlsplit(url).scheme not in ("redis", "rediss") or host not in LOCAL_HOSTS:
        raise SystemExit(f"--redis-url must be redis://127.0.0.1 or localhost, got {url!r}")
    return url


async def bounded(label: str, timeout_s: float, coro: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except TimeoutError:
        raise SystemExit(f"{label}: did not finish within {timeout_s:.0f} s") from None


def service_settings(bootstrap: str, redis_url: str) -> Settings:
    """Default settings pointed at the local broker and Redis; the environment is ignored."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redpanda=RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=10),
        redis=RedisSettings(url=SecretStr(redis_url)),
        reliability=ReliabilitySettings(),
        observability=ObservabilitySettings(),
        services={},
    )


def code_version() -> dict[str, Any]:
    """The commit measured, and files under core/ that differ from it."""

    def git(*cmd: str) -> str:
        done = subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "core_changes_not_committed": git("status", "--porcelain", "--", "core").splitlines(),
    }


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def delete_topics(config: RedpandaSettings, topics: list[str]) -> None:
    admin = create_admin(config)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def delete_keys(redis_url: str, pattern: str | None = None, keys: Sequence[str] = ()) -> int:
    """Delete ``keys`` and every key matching ``pattern`` (SCAN, then UNLINK in chunks)."""
    client = create_redis(RedisSettings(url=SecretStr(redis_url)))
    deleted = 0
    try:
        found = list(keys)
        if pattern is not None:
            found.extend([k async for k in client.scan_iter(match=pattern, count=5_000)])
        for i in range(0, len(found), 1_000):
            deleted += await client.unlink(*found[i : i + 1_000])
    finally:
        await client.aclose()
    return deleted


class _NoProbe:
    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class Window:
    """The benchmark clock: wall time, this process's CPU time and GC, plus a probe."""

    def __init__(self, probe: Probe | None = None) -> None:
        self.probe = probe or _NoProbe()
        self.gc = GcWatch()
        self.started = self.cpu_started = 0.0
        self.seconds = self.cpu_seconds = 0.0

    def start(self) -> None:
        self.gc.start()
        self.probe.start()
        self.cpu_started = time.process_time()
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        self.probe.stop()
        self.gc.stop()

    def since_start(self, at: float) -> float:
        return round(at - self.started, 4) if at else 0.0


# --------------------------------------------------------------------------- services


@dataclass
class Tracker:
    """Counts handled and final messages; its events drive the end of the clock."""

    count: int
    handled: int = 0
    finished: int = 0
    first_handled_at: float = 0.0
    last_handled_at: float = 0.0
    all_handled: asyncio.Event = field(default_factory=asyncio.Event)
    all_final: asyncio.Event = field(default_factory=asyncio.Event)

    def on_handled(self) -> None:
        """Call from the handler, once per handled message."""
        self.handled += 1
        if self.handled == 1:
            self.first_handled_at = time.perf_counter()
        if self.handled == self.count:
            self.last_handled_at = time.perf_counter()
            self.all_handled.set()

    def on_final(self, _message: ConsumedMessage) -> None:
        """The layer's finish callback: a message reached a final state."""
        self.finished += 1
        if self.finished == self.count:
            self.all_final.set()


Handler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ServiceRun:
    """A built (not started) service, its tracker and its clock."""

    service: ServiceOrchestrator
    name: str
    group: str
    tracker: Tracker
    window: Window
    dedup_calls: dict[str, int] = field(default_factory=dict)


def count_dedup_calls(dedup: DeduplicationManager) -> dict[str, int]:
    """Count the batch calls (round trips) a deduplicator makes and the ids in them.

    Wraps ``claim_many`` and ``mark_done_many`` on this one instance; a call costs a
    counter update, nothing per message.
    """
    calls = {"claim_calls": 0, "claim_ids": 0, "done_calls": 0, "done_ids": 0}
    claim_many, mark_done_many = dedup.claim_many, dedup.mark_done_many

    async def counted_claim_many(event_ids: Iterable[str]) -> dict[str, ClaimResult]:
        ids = list(event_ids)
        calls["claim_calls"] += 1
        calls["claim_ids"] += len(ids)
        return await claim_many(ids)

    async def counted_mark_done_many(event_ids: Sequence[str]) -> None:
        calls["done_calls"] += 1
        calls["done_ids"] += len(event_ids)
        await mark_done_many(event_ids)

    dedup.claim_many = counted_claim_many  # type: ignore[method-assign]
    dedup.mark_done_many = counted_mark_done_many  # type: ignore[method-assign]
    return calls


def build_service(
    label: str,
    bootstrap: str,
    redis_url: str,
    topic: str,
    count: int,
    handler_factory: Callable[[Tracker], Handler],
    probe: Probe | None = None,
    **overrides: Any,
) -> ServiceRun:
    """A service with one flow on ``topic``, a fresh group and a unique name."""
    name = unique_name(label)
    group = f"{name}-g"
    tracker = Tracker(count)
    service = (
        StreamServiceBuilder(name, settings=service_settings(bootstrap, redis_url))
        .with_redis()
        .add_consumer_handler([topic], group, handler_factory(tracker), **overrides)
        .build()
    )
    layer = service.flows[0].layer
    layer.add_finish_callback(tracker.on_final)
    run = ServiceRun(service, name, group, tracker, Window(probe))
    if layer.deduplicator is not None:
        run.dedup_calls = count_dedup_calls(layer.deduplicator)
    return run


async def drive_service(run: ServiceRun, join_timeout_s: float) -> dict[str, Any]:
    """Start ``run.service``, time it to the last committed offset, check, stop.

    Returns the detail of the run; ``run.window`` holds the clock.
    """
    service, window, tracker = run.service, run.window, run.tracker
    flow = service.flows[0]
    consumer, layer = flow.consumer, flow.layer

    async def clock_on_assignment() -> None:
        if not await consumer.wait_for_assignment(join_timeout_s):
            raise SystemExit(f"{run.name}: no partitions assigned within {join_timeout_s} s")
        window.start()

    assigned = asyncio.create_task(clock_on_assignment())
    try:
        await service.start()
        await assigned
        await tracker.all_handled.wait()
        await layer.flush_done()  # the done marks the loop would write after its next fetch
        await tracker.all_final.wait()
        await consumer.flush()  # the commit the policy would make within its interval
        all_final_at = time.perf_counter()
        window.stop()
        committed = 0
        for tp in consumer.assignment():
            committed += await consumer.client.committed(tp) or 0
        outcomes = {k.value: v for k, v in layer.outcomes.items()}
        dedup = layer.deduplicator
        detail = {
            "service": run.name,
            "group": run.group,
            "first_handled_s": window.since_start(tracker.first_handled_at),
            "last_handled_s": window.since_start(tracker.last_handled_at),
            "committed_s": window.since_start(all_final_at),
            "outcomes": outcomes,
            "dedup": dedup is not None,
            "dedup_unavailable": dedup.unavailable_count if dedup is not None else 0,
            "dedup_calls": dict(run.dedup_calls),
            "commits": consumer.commits,
            "committed_offsets": committed,
            "backpressure_pauses": flow.backpressure_pauses,
        }
        if committed != tracker.count:
            raise SystemExit(f"{run.name}: committed {committed} offsets, expected {tracker.count}")
        if outcomes["handled"] != tracker.count:
            raise SystemExit(f"{run.name}: outcomes {outcomes}, expected {tracker.count} handled")
        if dedup is not None and dedup.unavailable_count:
            raise SystemExit(f"{run.name}: Redis was unavailable {dedup.unavailable_count} times")
        return detail
    finally:
        if not assigned.done():
            assigned.cancel()
        await asyncio.gather(assigned, return_exceptions=True)
        await service.stop()


def counting_handler(tracker: Tracker) -> Handler:
    """The trivial handler of the ``full`` and ``no-dedup`` variants: it counts."""
    on_handled = tracker.on_handled

    async def handle(event: dict[str, Any]) -> None:
        on_handled()

    return handle


async def run_service(
    variant: str,
    args: argparse.Namespace,
    topic: str,
    count: int,
    probe: Probe | None = None,
) -> Run:
    """``full`` (dedup on) or ``no-dedup``: the builder service, timed as described above."""
    run = build_service(
        f"bench-pipeline-{variant}",
        args.bootstrap,
        args.redis_url,
        topic,
        count,
        counting_handler,
        probe,
        dedup=variant == "full",
    )
    try:
        detail = await drive_service(run, args.timeout)
    finally:
        detail_keys = await delete_keys(args.redis_url, f"dedup:{run.name}:*")
    detail["redis_keys_deleted"] = detail_keys
    w = run.window
    return Run(
        variant,
        count,
        w.seconds,
        w.cpu_seconds,
        detail["commits"],
        w.gc.collections,
        w.gc.seconds,
        list(w.gc.by_generation),
        detail,
    )


# --------------------------------------------------------------------------- plan, raw


async def run_plan(
    args: argparse.Namespace, topic: str, count: int, probe: Probe | None = None
) -> Run:
    """The plan's loop: per message EXISTS, handler, SET EX (SETEX), synchronous commit."""
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    name = unique_name("bench-pipeline-plan")
    prefix = f"plan:{name}:"
    consumer = MessageConsumer(
        config, [topic], f"{name}-g", commit_policy=CommitPolicy.per_message_sync()
    )
    redis: Redis = create_redis(RedisSettings(url=SecretStr(args.redis_url)))
    window = Window(probe)
    written: list[str] = []
    handled = duplicates = 0

    async def handle(event: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1

    await redis.ping()
    await consumer.start()
    try:
        if not await consumer.wait_for_assignment(args.timeout):
            raise SystemExit(f"plan: no partitions assigned within {args.timeout} s")
        done = 0
        window.start()
        while done < count:
            for message in (await consumer.fetch_batch())[: count - done]:
                key = prefix + (message.event_id or message.location())
                if await redis.exists(key):
                    duplicates += 1
                else:
                    await handle(message.value or {})
                    await redis.set(key, "1", ex=DEDUP_TTL_S)  # SET EX: SETEX, one round trip
                    written.append(key)
                await consumer.commit(message)
                done += 1
        window.stop()
        committed = 0
        for tp in consumer.assignment():
            committed += await consumer.client.committed(tp) or 0
        if committed != count or handled != count:
            raise SystemExit(f"plan: committed {committed}, handled {handled}, expected {count}")
        commits = consumer.commits
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
        deleted = await delete_keys(args.redis_url, keys=written)
    detail = {
        "redis_calls": 2 * count,
        "duplicates": duplicates,
        "redis_keys_deleted": deleted,
        "committed_offsets": committed,
    }
    return Run(
        "plan",
        count,
        window.seconds,
        window.cpu_seconds,
        commits,
        window.gc.collections,
        window.gc.seconds,
        list(window.gc.by_generation),
        detail,
    )


async def run_baseline(args: argparse.Namespace, topic: str, count: int) -> Run:
    """``bench_consume.run_raw``: same clock (assignment to the last batch's commit)."""
    m = await run_raw(args.bootstrap, topic, count, args.timeout)
    return Run(
        "raw",
        m.messages,
        m.seconds,
        m.cpu_seconds,
        m.commits,
        m.gc_collections,
        m.gc_seconds,
        list(m.gc_by_generation),
        {"fetches": m.fetches},
    )


# --------------------------------------------------------------------------- micro

# The done marks of a batch as one script call with one KEYS entry per id (the form
# ``DeduplicationManager`` falls back to for ids it cannot pack): what ``--micro``
# compares with ``mark_done_many``'s packed script (ids in one argument).
DONE_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""


def best_us(step: Callable[[], float], rounds: int, count: int) -> float:
    """Best of ``rounds`` runs of ``step`` (seconds for ``count`` messages), GC off: us/msg."""
    gc.collect()
    gc.disable()
    try:
        return min(step() for _ in range(rounds)) / count * 1e6
    finally:
        gc.enable()


def micro_cpu(count: int, rounds: int) -> list[tuple[str, float]]:
    """Per-message CPU of each step of the reliability path, alone, no broker, no Redis."""
    from micro_consume import TOPIC, consumer_with, make_records

    from core.streaming.correlation import CorrelationContext
    from core.streaming.infrastructure.consumed_message import decode_record
    from core.streaming.orchestration.dispatcher import Dispatcher
    from core.streaming.reliability.error_handler import ErrorHandler
    from core.streaming.reliability.metrics_collector import MetricsCollector
    from core.streaming.reliability.reliability_layer import ReliabilityLayer
    from core.streaming.tracing import handling_span

    records = make_records(count)
    messages = [decode_record(r, 1) for r in records]
    loads = orjson.loads
    known_parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    loop = asyncio.new_event_loop()

    def timed(body: Callable[[], object]) -> Callable[[], float]:
        def step() -> float:
            started = time.perf_counter()
            body()
            return time.perf_counter() - started

        return step

    def loads_all() -> None:
        for r in records:
            loads(r.value)

    def decode_all() -> None:
        for start in range(0, count, 500):
            held = [decode_record(r, 1) for r in records[start : start + 500]]
            del held

    def scopes(correlation_id: str | None, traceparent: str | None) -> Callable[[], None]:
        def body() -> None:
            for m in messages:
                with CorrelationContext.scope(
                    "svc", "op", correlation_id, m.event_id, traceparent=traceparent
                ):
                    pass

        return body

    def spans() -> None:
        for m in messages:
            with handling_span("svc", m.topic, m.partition, m.offset, None):
                pass

    collector = MetricsCollector("bench-micro")

    def metrics() -> None:
        for m in messages:
            collector.record_consumed(m.topic, consumer_group="g")
            collector.record_handled(m.topic, 0.0001, consumer_group="g")

    def metrics_now() -> None:
        # What the path does today: one record_consumed per batch, and the handled
        # recorder the layer resolves once per topic, called per message.
        record = collector.handled_recorder(TOPIC, "g")
        for start in range(0, count, 500):
            collector.record_consumed(TOPIC, len(messages[start : start + 500]), "g")
            for _ in messages[start : start + 500]:
                record(0.0001)

    async def handler(event: dict[str, Any]) -> None:
        return None

    def layer(with_metrics: bool) -> ReliabilityLayer:
        return ReliabilityLayer(
            "bench-micro",
            handler,
            consumer_with(records),
            error_handler=ErrorHandler(None, "bench-micro", dead_letter_enabled=False),
            metrics_collector=MetricsCollector("bench-micro") if with_metrics else None,
        )

    def process_all(with_metrics: bool) -> Callable[[], None]:
        async def run() -> None:
            process = layer(with_metrics).process_message
            for m in messages:
                await process(m, ClaimResult.BYPASSED)

        return lambda: loop.run_until_complete(run())

    def dispatch_all(with_layer: bool) -> Callable[[], None]:
        async def trivial(message: ConsumedMessage, claim: ClaimResult | None) -> None:
            return None

        async def run() -> None:
            process = layer(True).process_message if with_layer else trivial
            dispatcher = Dispatcher(process, ordering="partition")
            for start in range(0, count, 500):
                for m in messages[start : start + 500]:
                    dispatcher.submit(m, ClaimResult.BYPASSED)
                await dispatcher.wait_idle(60)
            await dispatcher.close()

        return lambda: loop.run_until_complete(run())

    steps: list[tuple[str, Callable[[], None]]] = [
        ("orjson.loads (all the raw loop does per message)", loads_all),
        ("decode_record (loads + ConsumedMessage)", decode_all),
        ("CorrelationContext.scope, new chain (these events)", scopes(None, None)),
        ("CorrelationContext.scope, known chain + traceparent", scopes("c", known_parent)),
        ("handling_span, no OpenTelemetry SDK", spans),
        ("metrics: record_consumed + record_handled", metrics),
        ("metrics as the layer does now (per batch + recorder)", metrics_now),
        ("process_message, dedup off, metrics on", process_all(True)),
        ("process_message, dedup off, metrics off", process_all(False)),
        ("Dispatcher, partition lanes, trivial process", dispatch_all(False)),
        ("Dispatcher + process_message (dedup off, metrics on)", dispatch_all(True)),
    ]
    try:
        rows = [(label, best_us(timed(body), rounds, count)) for label, body in steps]
    finally:
        loop.close()
    print(f"\nCPU per message, {count:,} messages of {TOPIC!r}, best of {rounds}, GC off")
    for label, us in rows:
        print(f"  {label:<54} {us:6.2f} us/msg")
    return rows


async def micro_redis(redis_url: str, ids_per_case: int) -> list[dict[str, Any]]:
    """Dedup round trips per batch size: claims and done marks as ``DeduplicationManager``
    makes them (packed scripts), and done marks as one script call with one key per id."""
    client = create_redis(RedisSettings(url=SecretStr(redis_url)))
    name = unique_name("bench-pipeline-micro")
    dedup = DeduplicationManager(client, name, 3600, consumer_group="g", local_cache_size=0)
    done_script = client.register_script(DONE_SCRIPT)
    ttl_ms = dedup.ttl_seconds * 1000

    async def scripted_done(ids: list[str]) -> None:
        await done_script(keys=[dedup.key_for(e) for e in ids], args=["done", ttl_ms])

    cases: dict[str, Callable[[list[str]], Awaitable[Any]]] = {
        "claim_many (packed script)": dedup.claim_many,
        "mark_done_many (packed script)": dedup.mark_done_many,
        "done marks, script with one key per id": scripted_done,
    }
    rows: list[dict[str, Any]] = []
    try:
        await client.ping()
        for batch in (50, 200, 500):
            for label, call in cases.items():
                ids = [uuid.uuid4().hex for _ in range(ids_per_case)]
                gc.collect()
                cpu_started, started = time.process_time(), time.perf_counter()
                for i in range(0, len(ids), batch):
                    await call(ids[i : i + batch])
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                rows.append(
                    {
                        "call": label,
                        "batch": batch,
                        "wall_us_per_id": round(wall / len(ids) * 1e6, 2),
                        "client_cpu_us_per_id": round(cpu / len(ids) * 1e6, 2),
                        "ms_per_call": round(wall / (len(ids) / batch) * 1e3, 3),
                    }
                )
    finally:
        await client.aclose()
        deleted = await delete_keys(redis_url, f"dedup:{name}:*")
    print(f"\nRedis per id, {ids_per_case:,} fresh ids per case ({deleted:,} keys deleted after)")
    print(f"  {'call':<38} {'batch':>5} {'wall us':>8} {'cpu us':>7} {'ms/call':>8}")
    for r in rows:
        print(
            f"  {r['call']:<38} {r['batch']:>5} {r['wall_us_per_id']:>8.2f} "
            f"{r['client_cpu_us_per_id']:>7.2f} {r['ms_per_call']:>8.3f}"
        )
    return rows


def run_micro(args: argparse.Namespace) -> dict[str, Any]:
    started_at = dt.datetime.now(dt.UTC)
    machine = machine_info()
    print(f"cpus {machine['cpus']}  loadavg {machine['loadavg_at_start']}  (shared machine)")
    cpu_rows = micro_cpu(args.micro_messages, args.micro_rounds)
    redis_rows = asyncio.run(micro_redis(args.redis_url, args.micro_ids))
    return {
        "benchmark": "bench_pipeline --micro",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "cpu_us_per_message": {label: round(us, 3) for label, us in cpu_rows},
        "cpu_messages": args.micro_messages,
        "cpu_rounds": args.micro_rounds,
        "redis": redis_rows,
    }


# --------------------------------------------------------------------------- main


def print_table(summaries: list[Summary], repeat: int) -> None:
    raw = next(s for s in summaries if s.variant == "raw")
    header = (
        f"{'variant':<9} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'ratio':>6} "
        f"{'spread':>7} {'cpu us/msg':>10} {'gc s':>6}  runs msg/s"
    )
    print(
        f"\nmedian of {repeat} repeat(s); ratio = median msg/s / median raw msg/s; "
        "spread = (max - min) / median of the repeats' msg/s"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        runs = ", ".join(f"{r.rate:,.0f}" for r in s.runs)
        print(
            f"{s.variant:<9} {s.messages:>9,} {s.median_seconds:>8.3f} {s.median_rate:>9,.0f} "
            f"{s.median_rate / raw.median_rate:>6.3f} {s.spread:>6.0%} "
            f"{s.median_cpu_us:>10.2f} {s.median_gc_seconds:>6.3f}  [{runs}]"
        )
    print()


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
    parser.add_argument("--messages", type=int, default=100_000, help="messages (100000)")
    parser.add_argument("--plan-messages", type=int, default=5_000, help="for `plan` (5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians reported (3)")
    parser.add_argument("--partitions", type=int, default=3, help="topic partitions (3)")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated subset of {DEFAULT_VARIANTS} (raw always runs)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed per variant run (300)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="result file (default results/pipeline-DATE.json; with --micro "
        "results/pipeline-micro-DATE.json; with --profile a directory, "
        "results/pipeline-profile-DATE)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="instead of the benchmark: run these variants (full and/or no-dedup) once under "
        "pyinstrument and once under cProfile, profiling the clock's window only; reports in "
        "--output or results/pipeline-profile-DATE/",
    )
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the topics")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.collect() + gc.freeze() once after the preload, before the timed variants "
        "(what `tradestream run` does after its services start); applies to every variant",
    )
    parser.add_argument(
        "--micro",
        action="store_true",
        help="instead of the benchmark: per-message CPU of each step of the reliability path "
        "(no broker) and the Redis cost of dedup calls per batch size; writes "
        "results/pipeline-micro-DATE.json",
    )
    parser.add_argument("--micro-messages", type=int, default=50_000, help="--micro (50000)")
    parser.add_argument("--micro-rounds", type=int, default=9, help="--micro best of (9)")
    parser.add_argument("--micro-ids", type=int, default=20_000, help="--micro Redis ids (20000)")
    args = parser.parse_args(argv)
    if args.messages <= 0 or args.plan_messages <= 0 or args.repeat <= 0:
        parser.error("--messages, --plan-messages and --repeat must be positive")
    args.plan_messages = min(args.plan_messages, args.messages)
    variants = {v.strip() for v in args.variants.split(",") if v.strip()} | {"raw"}
    unknown = variants - set(DESCRIPTIONS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    args.variants = [v for v in DESCRIPTIONS if v in variants]
    args.profile = [v.strip() for v in args.profile.split(",") if v.strip()]
    if not set(args.profile) <= {"full", "no-dedup"}:
        parser.error("--profile: full and/or no-dedup")
    check_local(args.bootstrap)
    check_local_redis(args.redis_url)
    return args


async def profile_service(
    args: argparse.Namespace, topic: str
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Run each ``--profile`` variant once per profiler: (rates, report file -> text)."""
    from profile_consume import CProfileProbe, PyinstrumentProbe

    rates: dict[str, dict[str, float]] = {}
    reports: dict[str, str] = {}
    for variant in args.profile:
        for profiler in ("pyinstrument", "cprofile"):
            probe = PyinstrumentProbe() if profiler == "pyinstrument" else CProfileProbe()
            gc.collect()
            label = f"profile {profiler} {variant}"
            r = await bounded(
                label, args.timeout, run_service(variant, args, topic, args.messages, probe)
            )
            print(f"  {label:<28} {r.rate:>10,.0f} msg/s under the profiler")
            rates[f"{variant}.{profiler}"] = {"seconds": r.seconds, "msgs_per_s": r.rate}
            if isinstance(probe, CProfileProbe):
                reports[f"{variant}.cprofile.txt"] = probe.report(40)
            else:
                reports[f"{variant}.pyinstrument.txt"] = probe.report_text()
    return rates, reports


async def run_profile(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Preload, then profile each ``--profile`` variant once per profiler (no table).

    Returns what was run (rates under the profilers) and the reports (file name -> text).
    """
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    started_at = dt.datetime.now(dt.UTC)
    topic = f"bench.pipeline.{started_at:%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    machine = machine_info()
    print(f"broker {args.bootstrap}  topic {topic}  loadavg {machine['loadavg_at_start']}")
    await create_topic(config, topic, args.partitions)
    try:
        await preload(config, topic, args.messages)
        rates, reports = await profile_service(args, topic)
    finally:
        if not args.keep_topic:
            with contextlib.suppress(Exception):
                await delete_topics(config, [topic, f"{topic}.dlq"])
    about = {
        "benchmark": "bench_pipeline --profile",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "messages": args.messages,
        "machine": machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "note": "rates under a profiler are far lower than the benchmark's; compare shares",
        "runs": rates,
    }
    return about, reports


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Preload, measure every variant ``args.repeat`` times, print the table; the result doc."""
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    started_at = dt.datetime.now(dt.UTC)
    topic = f"bench.pipeline.{started_at:%Y%m%d%H%M%S}.{uuid.uuid4().hex[:6]}"
    machine = machine_info()
    print(f"broker {args.bootstrap}  redis {urlsplit(args.redis_url).netloc}  topic {topic}")
    print(f"cpus {machine['cpus']}  loadavg {machine['loadavg_at_start']}  (shared machine)")
    counts = {
        "raw": args.messages,
        "full": args.messages,
        "no-dedup": args.messages,
        "plan": args.plan_messages,
    }
    runners: dict[str, Callable[[], Awaitable[Run]]] = {
        "raw": lambda: run_baseline(args, topic, counts["raw"]),
        "full": lambda: run_service("full", args, topic, counts["full"]),
        "no-dedup": lambda: run_service("no-dedup", args, topic, counts["no-dedup"]),
        "plan": lambda: run_plan(args, topic, counts["plan"]),
    }
    summaries = {v: Summary(v, DESCRIPTIONS[v], counts[v]) for v in args.variants}

    await create_topic(config, topic, args.partitions)
    try:
        production = await preload(config, topic, args.messages)
        print(
            f"preloaded {args.messages:,} messages (~{production['value_bytes']} B values) "
            f"in {production['seconds']:.1f} s (not measured)"
        )
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
            print(f"gc.freeze(): {gc.get_freeze_count():,} objects moved out of the collector")
        for rep in range(1, args.repeat + 1):
            for variant in args.variants:  # interleaved: drift on the shared box hits all alike
                gc.collect()  # garbage of the previous run is not this run's cost
                label = f"repeat {rep}/{args.repeat} {variant}"
                result = await bounded(label, args.timeout, runners[variant]())
                summaries[variant].runs.append(result)
                extra = ""
                if "last_handled_s" in result.detail:
                    d = result.detail
                    extra = f" first={d['first_handled_s']:.3f}s last={d['last_handled_s']:.3f}s"
                    if d["dedup_calls"]:
                        c = d["dedup_calls"]
                        extra += (
                            f" claims={c['claim_calls']}x{c['claim_ids'] / c['claim_calls']:.0f}"
                            f" done={c['done_calls']}x{c['done_ids'] / c['done_calls']:.0f}"
                        )
                print(
                    f"  {label:<24} {result.messages:>8,} msgs {result.seconds:>7.3f} s "
                    f"{result.rate:>9,.0f} msg/s cpu={result.cpu_us_per_message:.1f}us/msg "
                    f"commits={result.commits} gc={result.gc_collections}/"
                    f"{result.gc_seconds:.3f}s{extra}"
                )
    finally:
        if not args.keep_topic:
            with contextlib.suppress(Exception):
                await delete_topics(config, [topic, f"{topic}.dlq"])

    ordered = [summaries[v] for v in args.variants]
    print_table(ordered, args.repeat)
    raw = summaries["raw"]
    paired = {
        s.variant: [r.rate / b.rate for r, b in zip(s.runs, raw.runs, strict=True)] for s in ordered
    }
    doc: dict[str, Any] = {
        "benchmark": "bench_pipeline",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "bootstrap": args.bootstrap,
        "redis": urlsplit(args.redis_url).netloc,
        "topic": topic,
        "partitions": args.partitions,
        "repeat": args.repeat,
        "production": production,
        "machine": machine | {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "timed": "from partition assignment to the last message final and its offset committed",
        "gc": {
            "threshold": list(gc.get_threshold()),
            "frozen": args.gc_freeze,
            "frozen_objects": gc.get_freeze_count(),
        },
        "target": {"variant": "full", "min_ratio_to_raw": TARGET_RATIO},
        "variants": [
            {
                "variant": s.variant,
                "description": s.description,
                "messages": s.messages,
                "median_seconds": round(s.median_seconds, 4),
                "median_msgs_per_s": round(s.median_rate, 1),
                "min_msgs_per_s": round(s.min_rate, 1),
                "max_msgs_per_s": round(s.max_rate, 1),
                "spread": round(s.spread, 4),
                "median_cpu_us_per_message": round(s.median_cpu_us, 3),
                "median_gc_seconds": round(s.median_gc_seconds, 4),
                "ratio_to_raw": round(s.median_rate / raw.median_rate, 4),
                "paired_ratios": [round(x, 4) for x in paired[s.variant]],
                "paired_ratio_median": round(statistics.median(paired[s.variant]), 4),
                "runs": [r.as_dict() for r in s.runs],
            }
            for s in ordered
        ],
    }
    for variant in ("full", "no-dedup"):
        if variant in summaries:
            ratio = summaries[variant].median_rate / raw.median_rate
            verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
            print(f"{variant} / raw = {ratio:.3f} -> bar >= {TARGET_RATIO:.2f} {verdict}")
            if variant == "full":
                doc["target"] |= {"ratio": round(ratio, 4), "met": ratio >= TARGET_RATIO}
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = code_version()
    if args.micro:
        doc = run_micro(args) | {"code": code}
        output = args.output or RESULTS_DIR / f"pipeline-micro-{doc['started_at'][:10]}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote {output}")
        return 0
    if args.profile:
        about, reports = asyncio.run(run_profile(args))
        out_dir = args.output or RESULTS_DIR / f"pipeline-profile-{about['started_at'][:10]}"
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in reports.items():
            (out_dir / name).write_text(text)
        about["code"] = code
        (out_dir / "profile.json").write_bytes(
            orjson.dumps(about, option=orjson.OPT_INDENT_2) + b"\n"
        )
        print(f"profiles in {out_dir}")
        return 0
    doc = asyncio.run(run_benchmark(args))
    doc["code"] = code
    output = args.output or RESULTS_DIR / f"pipeline-{doc['started_at'][:10]}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
