"""How long the trading engine takes to rebuild its books from the ledger at start.

Writes a ledger of ``--executions`` fills (each with its ``order.placed``, over
``--strategies`` strategies and 5 instruments, one namespace) to a fresh
namespace on the broker, then measures, ``--repeat`` times each:

* ``restore``: ``TradingEngineService.restore()`` in this process (read the
  ledger, the recent rejections and ticks, fold, hand the books to the traders);
* ``process``: ``tradestream run trading_engine`` from process start to its
  ``book restored`` log line (Python start-up and connections included), and the
  peak resident memory of that process by then.

First with no snapshot (the whole ledger is folded), then after the engine wrote
a snapshot and ``--tail`` more executions were appended (the snapshot, the ids
window before it and the tail are read).

Usage (a broker and Redis must be running)::

    .venv/bin/python benchmarks/bench_engine_restart.py --bootstrap 127.0.0.1:9092 \\
        --redis redis://127.0.0.1:6379/0 --executions 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings, TradingSettings
from core.schemas.events import EventType, OrderEvent, OrderStatus, OrderType, SignalAction
from core.schemas.topics import TopicMap
from core.streaming.infrastructure.message_producer import MessageProducer, Payload
from services.registry import build_service
from services.trading_engine.service import TradingEngineService

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {
    738561: "RELIANCE",
    2953217: "TCS",
    408065: "INFY",
    341249: "HDFCBANK",
    1270529: "ICICIBANK",
}


async def write_ledger(
    settings: Settings, namespace: str, fills: int, strategies: int, first: int = 0
) -> float:
    """Publish ``fills`` placed+filled pairs (numbered from ``first``); returns seconds taken."""
    rng = random.Random(first + 1)
    producer = MessageProducer(settings.redpanda, "bench-ledger")
    topics = TopicMap(namespace)
    started = time.perf_counter()
    batch: list[tuple[str | bytes | None, Payload]] = []
    placed: list[tuple[str | bytes | None, Payload]] = []
    sequence = 2 * first
    try:
        for n in range(first, first + fills):
            token = rng.choice(list(TOKENS))
            base: dict[str, Any] = dict(
                client_order_id=f"bench-{n}",
                signal_id=f"sig-{n}",
                strategy_id=f"strategy-{n % strategies}",
                namespace=namespace,
                instrument_token=token,
                symbol=TOKENS[token],
                action=rng.choice((SignalAction.BUY, SignalAction.SELL)),
                quantity=rng.randint(1, 50),
                order_type=OrderType.MARKET,
            )
            sequence += 1
            placed.append(
                (f"bench-{n}", OrderEvent(**base, status=OrderStatus.PLACED, sequence=sequence))
            )
            sequence += 1
            price = round(1000 + rng.uniform(-50, 50), 2)
            fill = OrderEvent(
                **base, status=OrderStatus.FILLED, fill_price=price, sequence=sequence
            )
            batch.append((f"bench-{n}", fill))
            if len(batch) >= 2000:
                await producer.send_many(topics.orders(), placed, EventType.ORDER_PLACED)
                await producer.send_many(topics.executions(), batch, EventType.ORDER_FILLED)
                batch, placed = [], []
        if batch:
            await producer.send_many(topics.orders(), placed, EventType.ORDER_PLACED)
            await producer.send_many(topics.executions(), batch, EventType.ORDER_FILLED)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def restore_once(settings: Settings) -> dict[str, float]:
    engine = build_service("trading_engine", settings)
    assert isinstance(engine, TradingEngineService)
    await engine.trader_factory.initialize()
    cpu0 = time.process_time()
    started = time.perf_counter()
    await engine.restore()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    fills = sum(view.book.fills for view in engine.book_views())
    return {"wall_s": wall, "cpu_s": cpu, "fills": fills}


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_once(env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawning the engine to its ``book restored`` line, and its peak RSS (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", "trading_engine"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if '"book restored"' in line:
                return time.perf_counter() - started, peak_rss_mb(proc.pid)
        raise RuntimeError(f"engine exited with {proc.wait()} before restoring")
    finally:
        proc.terminate()
        proc.wait(30)


async def snapshot_and_extend(
    settings: Settings, namespace: str, executions: int, tail: int, strategies: int
) -> None:
    """Have an engine restore and write its snapshot, then append ``tail`` executions."""
    engine = build_service("trading_engine", settings)
    assert isinstance(engine, TradingEngineService)
    await engine.trader_factory.initialize()
    await engine.restore()
    producer = MessageProducer(settings.redpanda, "bench-snapshot")
    try:
        await engine.write_snapshots(producer)
    finally:
        await producer.stop()
    assert engine.snapshots_written == 1
    await write_ledger(settings, namespace, tail, strategies, first=executions)


def measure(settings: Settings, env: dict[str, str], repeat: int, label: str) -> dict[str, object]:
    restores = [asyncio.run(restore_once(settings)) for _ in range(repeat)]
    processes = [process_once(env) for _ in range(repeat)]
    walls = [r["wall_s"] for r in restores]
    return {
        "case": label,
        "fills_restored": restores[0]["fills"],
        "restore_wall_s": [round(w, 3) for w in walls],
        "restore_wall_median_s": round(statistics.median(walls), 3),
        "restore_cpu_s": [round(r["cpu_s"], 3) for r in restores],
        "process_to_restored_s": [round(p, 3) for p, _ in processes],
        "process_to_restored_median_s": round(statistics.median(p for p, _ in processes), 3),
        "process_peak_rss_mb": [round(m, 1) for _, m in processes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--tail", type=int, default=1_000)
    parser.add_argument("--strategies", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()
    if not args.bootstrap or not args.redis:
        parser.error("--bootstrap and --redis (or KAFKA_BOOTSTRAP_SERVERS, REDIS_URL) are needed")
    namespace = f"bench-{uuid4().hex[:8]}"
    settings = Settings(
        broker_namespace=namespace,
        redpanda=RedpandaSettings(bootstrap_servers=args.bootstrap, group_id_prefix=namespace),
        redis=RedisSettings(url=SecretStr(args.redis)),
        trading=TradingSettings(market_always_open=True),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}
    env.update(
        TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=args.bootstrap,
        TRADESTREAM_REDPANDA__GROUP_ID_PREFIX=namespace,
        TRADESTREAM_REDIS__URL=args.redis,
        TRADESTREAM_BROKER_NAMESPACE=namespace,
        TRADESTREAM_OBSERVABILITY__LOG_FORMAT="json",
    )
    writing = asyncio.run(write_ledger(settings, namespace, args.executions, args.strategies))
    # No snapshot may be written while the whole-ledger case is measured.
    full = measure(
        settings,
        {**env, "TRADESTREAM_TRADING__SNAPSHOT_EVERY": "0"},
        args.repeat,
        "whole ledger, no snapshot",
    )
    asyncio.run(
        snapshot_and_extend(settings, namespace, args.executions, args.tail, args.strategies)
    )
    snapshot = measure(settings, env, args.repeat, f"snapshot + {args.tail} executions after it")
    result = {
        "executions": args.executions,
        "ledger_records": 2 * args.executions,
        "namespace": namespace,
        "write_s": round(writing, 2),
        "cases": [full, snapshot],
        "python": sys.version.split()[0],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
