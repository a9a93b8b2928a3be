"""Memory under sustained load: a service's RSS over ``--seconds`` at a steady rate.

A builder service (dedup on real Redis, metrics, correlation, checkpointed
commits) runs in its own process and handles ``--rate`` envelopes a second,
published by this process for ``--seconds``. Its RSS is sampled every
``--every`` seconds; the growth from the end of the warm-up (``--warmup``) to the
end is reported (the target is under 5%). Only 127.0.0.1/localhost; bounded; the
topic is deleted.

    bash benchmarks/peers.sh --soak
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def child(args: argparse.Namespace) -> None:
    """The service: handles until told to stop (stdin closes)."""

    async def handle(event: dict[str, Any]) -> None:
        return None

    group = f"bench-soak-{uuid.uuid4().hex[:6]}"
    service = (
        StreamServiceBuilder(group, settings=settings_of(args))
        .ensure_topics(False)
        .with_redis()
        .add_consumer_handler([args.topic], group, handle)
        .build()
    )
    await service.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    with serving_gc():  # as `tradestream run` serves
        await loop.run_in_executor(None, sys.stdin.read)
    await service.stop()


async def produce(args: argparse.Namespace, sample: Any) -> None:
    producer = MessageProducer(settings_of(args).redpanda, "bench-soak")
    await producer.start()
    try:
        started = time.perf_counter()
        n = 0
        next_sample = 0.0
        while (elapsed := time.perf_counter() - started) < args.seconds:
            if elapsed >= next_sample:
                sample(elapsed)
                next_sample += args.every
            target = int(elapsed * args.rate)
            while n < target:
                await producer.enqueue(args.topic, f"k{n % 64}", {"n": n, "pad": "x" * 150})
                n += 1
            await asyncio.sleep(0.01)
        await producer.flush()
        sample(time.perf_counter() - started)
    finally:
        await producer.stop()


def main() -> None:
    parser = server_arguments(__doc__)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return
    check_local(args)
    args.topic = f"bench-soak-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(args.bootstrap, args.topic, args.partitions))
    command = [
        sys.executable, __file__, "--child", "--topic", args.topic,
        "--bootstrap", args.bootstrap, "--redis-url", args.redis_url,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    samples: list[tuple[float, int]] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        asyncio.run(produce(args, lambda t: samples.append((t, rss_bytes(proc.pid)))))
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        asyncio.run(delete_topic(args.bootstrap, args.topic))
    warm = [rss for t, rss in samples if t >= args.warmup]
    growth = (warm[-1] - warm[0]) / warm[0] * 100 if len(warm) > 1 else float("nan")
    print(
        f"{args.rate:.0f} msg/s for {args.seconds:.0f} s: RSS {warm[0] / 2**20:.1f} MB after "
        f"the warm-up, {warm[-1] / 2**20:.1f} MB at the end: {growth:+.1f}%"
    )
    write_results(args, "soak", {"samples": samples, "growth_pct": growth})


if __name__ == "__main__":
    main()
