"""Exactly-once against at-least-once: a copier service, side by side, per commit interval.

One run, one broker, one machine. The script

1. creates a fresh input topic (``--partitions``, default 4) and preloads it with
   ``--messages`` envelopes (~200 bytes, keys spread over every partition; not timed);
2. runs, ``--repeat`` times with the variants interleaved, a copier service built
   with ``StreamServiceBuilder`` (one output envelope per input, through
   ``producer.enqueue``; no dedup, metrics on) in two guarantees and three commit
   intervals (``--intervals``, default 100, 1000, 5000 ms):

   * ``alo-<ms>`` -- ``processing_guarantee="at_least_once"``: outputs acknowledged,
     then offsets committed;
   * ``eos-<ms>`` -- ``processing_guarantee="exactly_once"``: outputs and offsets in
     one transaction per input partition and checkpoint;

3. prints a table of medians (msg/s, min-max spread, CPU microseconds per message of
   this process: the service's own cost, not the broker's) and writes
   ``benchmarks/results/exactly-once-<date>.json``.

Each variant uses a fresh consumer group (it reads the input from the start) and a
fresh output topic. The clock starts once the group assigned every partition and
stops when the handler has run on the last input (a longer commit interval would
otherwise be charged up to one interval of waiting at the end); the time until the
last offset is committed (for ``eos``: the last transaction) is reported beside it
as ``tail``. The output is then read back (``read_committed``) and counted.

Only talks to a broker on 127.0.0.1/localhost, bounds each variant by
``--timeout`` seconds and deletes its topics at the end::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python benchmarks/bench_exactly_once.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from core.config.settings import RedpandaSettings, Settings  # noqa: E402
from core.streaming.clients import create_admin  # noqa: E402
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator  # noqa: E402
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder  # noqa: E402
from core.streaming.reliability.reliability_layer import MessageOutcome  # noqa: E402
from core.streaming.types import TopicSpec  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class Sample:
    variant: str
    guarantee: str
    interval_ms: int
    messages: int
    seconds: float
    cpu_s: float
    outputs: int
    tail_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.messages * 1e6


def _envelope(n: int) -> bytes:
    return orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": "bench.input",
            "timestamp": "2026-01-01T00:00:00Z",
            "source": "bench",
            "correlation_id": None,
            "causation_id": None,
            "schema_version": 1,
            "data": {"n": n, "symbol": "NVDA", "qty": n % 100, "price": 101.25},
        }
    )


async def _preload(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        acks = [
            await producer.send(topic, _envelope(n), key=f"k{n}".encode()) for n in range(count)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _service(
    config: RedpandaSettings, source: str, sink: str, group: str, guarantee: str, interval: int
) -> ServiceOrchestrator:
    base = Settings()
    settings = base.model_copy(
        update={
            "redpanda": config,
            "reliability": base.reliability.model_copy(
                update={
                    "processing_guarantee": guarantee,
                    "commit_interval_ms": interval,
                    "dedup_enabled": False,
                }
            ),
        }
    )
    service: ServiceOrchestrator

    async def copy(event: dict[str, Any]) -> None:
        await service.producer.enqueue(sink, None, {"src": event["id"]}, "bench.copy")

    service = (
        StreamServiceBuilder("bench-copier", config, settings)
        .add_producer([sink])
        .add_consumer_handler([source], group, copy)
        .build()
    )
    return service


async def _run_one(
    bootstrap: str,
    source: str,
    partitions: int,
    messages: int,
    guarantee: str,
    interval: int,
    timeout_s: float,
    created: list[str],
) -> Sample:
    config = RedpandaSettings(bootstrap_servers=bootstrap)
    tag = uuid.uuid4().hex[:6]
    sink = f"{source}-out-{tag}"
    admin = create_admin(config)
    await admin.start()
    try:
        await admin.create_topics([TopicSpec(sink, partitions=partitions)])
    finally:
        await admin.close()
    created.append(sink)
    service = _service(config, source, sink, f"bench-{tag}", guarantee, interval)
    await service.start()
    try:
        consumer = service.consumers[0]
        deadline = time.monotonic() + timeout_s
        while len(consumer.assignment()) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError("the copier was not assigned every partition")
            await asyncio.sleep(0.01)
        layer = service.flows[0].layer
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        while layer.outcomes[MessageOutcome.HANDLED] < messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{guarantee}/{interval}: not every input handled in time")
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        while sum(consumer.committed_offset(tp) or 0 for tp in consumer.assignment()) < messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{guarantee}/{interval}: not every input committed in time")
            await asyncio.sleep(0.002)
        tail = time.perf_counter() - started - seconds
    finally:
        await service.stop()
    from core.streaming.topic_reader import read_topic

    outputs = len(await read_topic(config, sink, timeout_s=120))
    variant = f"{'eos' if guarantee == 'exactly_once' else 'alo'}-{interval}"
    return Sample(variant, guarantee, interval, messages, seconds, cpu, outputs, tail)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--intervals", default="100,1000,5000")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    hosts = {h.rsplit(":", 1)[0] for h in args.bootstrap.split(",")}
    if not hosts <= LOCAL_HOSTS:
        raise SystemExit(f"refusing a broker that is not on localhost: {args.bootstrap}")
    intervals = [int(v) for v in args.intervals.split(",")]
    config = RedpandaSettings(bootstrap_servers=args.bootstrap)
    source = f"bench-eos-{uuid.uuid4().hex[:8]}"
    admin = create_admin(config)
    await admin.start()
    created = [source]
    try:
        await admin.create_topics([TopicSpec(source, partitions=args.partitions)])
        await _preload(args.bootstrap, source, args.messages)
        samples: list[Sample] = []
        for round_ in range(args.repeat):
            for interval in intervals:
                for guarantee in ("at_least_once", "exactly_once"):
                    sample = await _run_one(
                        args.bootstrap,
                        source,
                        args.partitions,
                        args.messages,
                        guarantee,
                        interval,
                        args.timeout,
                        created,
                    )
                    samples.append(sample)
                    print(
                        f"round {round_ + 1} {sample.variant:>9}: {sample.rate:9.0f} msg/s "
                        f"{sample.cpu_us:6.1f} CPU us/msg, tail {sample.tail_s:5.2f} s, "
                        f"outputs {sample.outputs}",
                        flush=True,
                    )
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics(created)
        await admin.close()
    _report(samples, args)


def _report(samples: list[Sample], args: argparse.Namespace) -> None:
    variants = list(dict.fromkeys(s.variant for s in samples))
    rows = []
    print(
        f"\n{'variant':>9} {'msg/s (median)':>15} {'min-max':>17} {'CPU us/msg':>11} "
        f"{'vs alo':>7} {'tail s':>7} {'outputs':>8}"
    )
    for variant in variants:
        mine = [s for s in samples if s.variant == variant]
        rates = [s.rate for s in mine]
        median = statistics.median(rates)
        alo = [s.rate for s in samples if s.variant == "alo-" + variant.split("-")[1]]
        ratio = median / statistics.median(alo) if alo else float("nan")
        cpu = statistics.median(s.cpu_us for s in mine)
        tail = statistics.median(s.tail_s for s in mine)
        outputs = sorted({s.outputs for s in mine})
        print(
            f"{variant:>9} {median:15.0f} {min(rates):8.0f}-{max(rates):<8.0f} {cpu:11.1f} "
            f"{ratio:7.2f} {tail:7.2f} {outputs}"
        )
        rows.append(
            {
                "variant": variant,
                "median_rate": median,
                "rates": rates,
                "cpu_us": cpu,
                "vs_alo": ratio,
                "tail_s": tail,
                "outputs": outputs,
            }
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"exactly-once-{dt.date.today().isoformat()}.json"
    path.write_text(
        json.dumps(
            {
                "args": vars(args),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rows": rows,
                "samples": [asdict(s) for s in samples],
            },
            indent=2,
        )
    )
    print(f"\nwritten {path}")


if __name__ == "__main__":
    asyncio.run(main())
