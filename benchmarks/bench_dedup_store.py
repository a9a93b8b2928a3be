"""Dedup round trips on one Redis node against a Redis Cluster, side by side.

    python -m benchmarks.bench_dedup_store --redis-url redis://127.0.0.1:6379/0 \\
        --cluster-url redis+cluster://127.0.0.1:7000/0 [--batch 500] [--batches 200]

Each run drives a ``DeduplicationManager`` as a flow does per fetched batch:
``claim_batch`` of ``--batch`` fresh ids, then ``mark_done_many`` of them; then
claims the same ids again (all duplicates, the redelivery path). Runs alternate
between the backends, ``--repeat`` times; the table shows the median ids per
second and milliseconds per batch for each step. The cluster store splits a batch
into its 32 hash-tagged shards and pipelines one script call per shard, so a
batch costs one round trip per master, in parallel.

Only talks to Redis on 127.0.0.1/localhost. Writes
``benchmarks/results/dedup-store-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.config.settings import RedisSettings
from core.streaming.clients import create_redis
from core.streaming.reliability.deduplication_manager import DeduplicationManager

ROOT = Path(__file__).resolve().parents[1]


async def run(url: str, batch: int, batches: int) -> dict[str, float]:
    settings = RedisSettings(url=SecretStr(url))
    client: Any = create_redis(settings)
    try:
        if hasattr(client, "initialize"):
            await client.initialize()
        dedup = DeduplicationManager(
            client,
            "bench",
            consumer_group=uuid.uuid4().hex[:8],
            local_cache_size=0,
            shards=settings.dedup_shard_count,
        )
        timings: dict[str, float] = {"claim": 0.0, "done": 0.0, "reclaim": 0.0}
        for b in range(batches):
            ids = [f"{b}-{i}-{uuid.uuid4().hex[:6]}" for i in range(batch)]
            began = time.perf_counter()
            await dedup.claim_batch(ids, partition="t:0", generation=1)
            claimed = time.perf_counter()
            await dedup.mark_done_many(ids)
            done = time.perf_counter()
            await dedup.claim_batch(ids, partition="t:0", generation=1)
            again = time.perf_counter()
            timings["claim"] += claimed - began
            timings["done"] += done - claimed
            timings["reclaim"] += again - done
        return {k: batch * batches / v for k, v in timings.items()}
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--cluster-url", required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for url in (args.redis_url, args.cluster_url):
        host = url.split("@")[-1].split("://")[-1].split(":")[0]
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("only Redis on 127.0.0.1/localhost")
    load = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {"single node": [], "cluster (3 masters)": []}
    for _ in range(args.repeat):
        results["single node"].append(await run(args.redis_url, args.batch, args.batches))
        results["cluster (3 masters)"].append(await run(args.cluster_url, args.batch, args.batches))
    print(f"ids per second (median of {args.repeat}; batch {args.batch}, {args.batches} batches)")
    print(f"{'backend':<22}{'claim':>10}{'done':>10}{'re-claim':>10}  ms per batch (claim+done)")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("claim", "done", "reclaim")}
        per_batch = 1000 * args.batch * (1 / med["claim"] + 1 / med["done"])
        print(
            f"{name:<22}{med['claim']:>10.0f}{med['done']:>10.0f}{med['reclaim']:>10.0f}"
            f"  {per_batch:.1f}"
        )
    out = ROOT / "benchmarks" / "results" / f"dedup-store-{dt.date.today().isoformat()}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "load_average_at_start": load,
                "load_average_at_end": os.getloadavg()[0],
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
