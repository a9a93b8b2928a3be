"""Chaos scenarios and the run of one: instances, steady feed, faults, drain, verdict."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.chaos import faults as f
from tests.chaos.faults import Context, FaultFn
from tests.chaos.harness import Feeder, FeedStats, Infra, Pool
from tests.chaos.verify import Verdict, collect, judge, read_all, read_effects


@dataclass
class Scenario:
    name: str
    label: str
    faults: list[tuple[float, FaultFn]]
    duration_s: float = 40.0
    instances: int = 3
    policy: str = "fail_open"
    kafka_cluster: bool = False
    redis_cluster: bool = False


@dataclass
class RunConfig:
    rate: float = 150.0
    partitions: int = 6
    handler_ms: float = 5.0
    max_in_flight: int = 100
    ordering: str = "key"
    concurrency: int = 8
    poison_every: int = 100
    drain_timeout_s: float = 120.0
    base_dir: Path = Path(".infra/chaos")
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    scenario: Scenario
    stats: FeedStats
    verdict: Verdict
    faults: list[str]
    drained_s: float
    exit_codes: dict[str, int | None]
    notes: list[str]
    run_dir: Path


def catalogue(session_timeout_s: float = 10.0) -> dict[str, Scenario]:
    """Every scenario of ``scripts/chaos.sh``: each fault alone, then combined."""
    frozen = session_timeout_s + 5
    return {
        "baseline": Scenario("baseline", "no fault", [], duration_s=30),
        "kill": Scenario(
            "kill",
            "kill -9 of an instance x3",
            [(8, f.kill_instance()), (20, f.kill_instance()), (32, f.kill_instance())],
            duration_s=45,
        ),
        "churn": Scenario(
            "churn", "members join/leave every 4 s", [(6, f.churn(4.0, rounds=8))], duration_s=45
        ),
        "broker": Scenario(
            "broker",
            "kill -9 of a broker, restart after 10 s",
            [(10, f.kill_broker(10.0))],
            kafka_cluster=True,
        ),
        "redis-failover": Scenario(
            "redis-failover",
            "Redis Cluster master kill -9 (failover)",
            [(10, f.redis_failover(1, 10.0))],
            redis_cluster=True,
        ),
        "redis-open": Scenario(
            "redis-open", "Redis unreachable 10 s, fail_open", [(10, f.redis_stall(10.0))]
        ),
        "redis-closed": Scenario(
            "redis-closed",
            "Redis unreachable 10 s, fail_closed",
            [(10, f.redis_stall(10.0))],
            policy="fail_closed",
        ),
        "zombie": Scenario(
            "zombie",
            f"SIGSTOP of an instance {frozen:g} s (zombie)",
            [(10, f.zombie(frozen))],
            duration_s=45,
        ),
        "combined": Scenario(
            "combined",
            "all of the above in one run (fail_closed)",
            [
                (6, f.churn(5.0, rounds=10)),
                (10, f.kill_instance()),
                (18, f.kill_broker(8.0)),
                (34, f.redis_stall(10.0)),
                (48, f.zombie(frozen)),
                (60, f.kill_instance()),
            ],
            duration_s=75,
            policy="fail_closed",
            kafka_cluster=True,
        ),
    }


def worker_env(
    infra: Infra, scenario: Scenario, cfg: RunConfig, names: dict[str, str], run_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADESTREAM_", "CHAOS_"))}
    env.update(
        TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS=infra.bootstrap,
        TRADESTREAM_REDPANDA__TOPIC_REPLICATION_FACTOR=str(infra.replication),
        TRADESTREAM_REDPANDA__TOPIC_PARTITIONS=str(cfg.partitions),
        TRADESTREAM_REDIS__URL=infra.redis_url,
        TRADESTREAM_RELIABILITY__DEDUP_FAILURE_POLICY=scenario.policy,
        TRADESTREAM_RELIABILITY__MAX_IN_FLIGHT=str(cfg.max_in_flight),
        TRADESTREAM_RELIABILITY__ORDERING=cfg.ordering,
        TRADESTREAM_RELIABILITY__DEFAULT_CONCURRENCY=str(cfg.concurrency),
        CHAOS_RUN_DIR=str(run_dir),
        CHAOS_INPUT=names["input"],
        CHAOS_OUTPUT=names["output"],
        CHAOS_GROUP=names["group"],
        CHAOS_HANDLER_MS=str(cfg.handler_ms),
    )
    env.update(cfg.extra_env)
    return env


async def create_topics(infra: Infra, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, partitions, infra.replication) for n in names], timeout_ms=30_000
        )
        deadline = time.monotonic() + 30
        while True:
            described = await admin.describe_topics(names)
            if all(
                len(d.get("partitions") or []) == partitions
                and all(p.get("leader", -1) >= 0 for p in d["partitions"])
                for d in described
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} not ready")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def _drain(run_dir: Path, want: set[str], timeout_s: float) -> float:
    """Seconds until every regular input has a side effect (or ``timeout_s``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        effects = read_effects(run_dir)
        if all(any(k == "E" for k, _ in effects.get(i, ())) for i in want):
            return time.monotonic() - began
        await asyncio.sleep(1.0)
    return float("inf")


async def run_scenario(scenario: Scenario, infra: Infra, cfg: RunConfig) -> Result:
    """Run one scenario end to end and judge it."""
    run_id = f"{scenario.name}-{uuid.uuid4().hex[:6]}"
    run_dir = (cfg.base_dir / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    names = {
        "input": f"chaos.{run_id}.in",
        "output": f"chaos.{run_id}.out",
        "group": f"chaos.{run_id}",
    }
    dlq = names["input"] + ".dlq"
    await create_topics(infra, [names["input"], names["output"], dlq], cfg.partitions)
    pool = Pool(worker_env(infra, scenario, cfg, names, run_dir), run_dir)
    ctx = Context(infra, pool, names["input"])
    await asyncio.gather(*(pool.spawn() for _ in range(scenario.instances)))
    feeder = Feeder(infra.bootstrap, names["input"], cfg.rate, cfg.poison_every)
    started = time.monotonic()

    async def at(delay: float, fault: FaultFn) -> None:
        await asyncio.sleep(max(0.0, started + delay - time.monotonic()))
        await fault(ctx)

    fault_tasks = [asyncio.ensure_future(at(d, fault)) for d, fault in scenario.faults]
    try:
        stats = await feeder.run(scenario.duration_s)
        await asyncio.gather(*fault_tasks)
        want = await _regular_ids(infra, names["input"])
        drained = await _drain(run_dir, want, cfg.drain_timeout_s)
    finally:
        for task in fault_tasks:
            task.cancel()
        codes = await pool.stop_all()
    history = await collect(
        infra.bootstrap, names["input"], names["output"], dlq, names["group"], run_dir
    )
    history.faults = ctx.faults
    verdict = judge(history, cfg.max_in_flight)
    return Result(
        scenario,
        stats,
        verdict,
        [fault.label for fault in ctx.faults],
        drained,
        codes,
        ctx.notes,
        run_dir,
    )


async def _regular_ids(infra: Infra, topic: str) -> set[str]:
    out = set()
    for record in await read_all(infra.bootstrap, topic):
        envelope = orjson.loads(record.value)  # type: ignore[attr-defined]
        if not envelope["data"].get("poison"):
            out.add(str(envelope["id"]))
    return out
