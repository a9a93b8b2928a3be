"""Faults a chaos run injects, each recorded with its time and what it interrupted.

A fault is an async function of the run's :class:`Context`; the factories below
make them with their parameters. Every one is bounded in time and touches only
processes this run started (workload instances by their PID, servers through
the project's scripts or their own pid files).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient

from tests.chaos.harness import Infra, Instance, Pool
from tests.chaos.verify import Fault


@dataclass
class Context:
    infra: Infra
    pool: Pool
    topic: str
    faults: list[Fault] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    notes: list[str] = field(default_factory=list)
    background: list[asyncio.Future[object]] = field(default_factory=list)

    def record(self, label: str, interrupts: int = 0) -> None:
        self.faults.append(Fault(time.monotonic(), label, interrupts))


FaultFn = Callable[[Context], Awaitable[None]]


def _victim(ctx: Context) -> Instance:
    running = ctx.pool.running()
    if not running:
        raise RuntimeError("no running instance to hurt")
    return ctx.rng.choice(running)


def kill_instance(restart_after_s: float = 3.0) -> FaultFn:
    """kill -9 one instance; a replacement starts ``restart_after_s`` later (a platform restart)."""

    async def fault(ctx: Context) -> None:
        victim = _victim(ctx)
        await victim.kill9()
        ctx.record("kill -9 instance", interrupts=1)
        await asyncio.sleep(restart_after_s)
        await ctx.pool.spawn(wait=False)

    return fault


def churn(period_s: float = 4.0, rounds: int = 6, low: int = 2, high: int = 3) -> FaultFn:
    """Members leave (SIGTERM, graceful) and join in turn, one change every ``period_s``."""

    async def fault(ctx: Context) -> None:
        for i in range(rounds):
            running = ctx.pool.running()
            if len(running) > low and (i % 2 == 0 or len(running) >= high):
                victim = ctx.rng.choice(running)
                ctx.record("member leaves")
                ctx.background.append(asyncio.ensure_future(victim.terminate()))
            else:
                ctx.record("member joins")
                await ctx.pool.spawn(wait=False)
            await asyncio.sleep(period_s)

    return fault


async def _leader_broker(ctx: Context) -> int:
    """The broker leading partition 0 of the input topic (1-based, as the script counts)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.infra.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([ctx.topic])
        leader = int(described[0]["partitions"][0]["leader"])
    finally:
        await admin.close()
    return leader


def kill_broker(down_s: float = 10.0) -> FaultFn:
    """kill -9 the broker leading input partition 0, restart it after ``down_s``."""

    async def fault(ctx: Context) -> None:
        env = ctx.infra.kafka_cluster_env
        if env is None:
            raise RuntimeError("kill_broker needs the 3-broker cluster")
        node = await _leader_broker(ctx)
        await ctx.infra.script("kafka-cluster.sh", "kill", str(node), env=env)
        ctx.record(f"kill -9 broker {node}")
        await asyncio.sleep(down_s)
        began = time.monotonic()
        await ctx.infra.script("kafka-cluster.sh", "resume", str(node), env=env)
        ctx.notes.append(f"broker {node} back {time.monotonic() - began:.1f} s after restart")

    return fault


def redis_stall(seconds: float = 10.0) -> FaultFn:
    """Every Redis process frozen (SIGSTOP) for ``seconds``: unreachable, data kept."""

    async def fault(ctx: Context) -> None:
        pids = ctx.infra.redis_pids
        if not pids:
            raise RuntimeError("no redis pid to stop")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        ctx.record(f"Redis unreachable {seconds:g} s")
        try:
            await asyncio.sleep(seconds)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    return fault


def redis_failover(node: int = 1, back_after_s: float = 10.0) -> FaultFn:
    """kill -9 a Redis Cluster master; its replica takes over; it returns as a replica."""

    async def fault(ctx: Context) -> None:
        env = ctx.infra.redis_cluster_env
        if env is None:
            raise RuntimeError("redis_failover needs the Redis Cluster")
        ctx.record(f"Redis master {node} killed")
        await ctx.infra.script("redis-cluster.sh", "kill", str(node), env=env)
        ctx.notes.append("replica promoted")
        await asyncio.sleep(back_after_s)
        await ctx.infra.script("redis-cluster.sh", "resume", str(node), env=env)

    return fault


def zombie(seconds: float = 15.0) -> FaultFn:
    """One instance frozen (SIGSTOP) past its session timeout, then continued."""

    async def fault(ctx: Context) -> None:
        victim = _victim(ctx)
        victim.signal(signal.SIGSTOP)
        ctx.record(f"SIGSTOP instance {seconds:g} s", interrupts=1)
        try:
            await asyncio.sleep(seconds)
        finally:
            victim.signal(signal.SIGCONT)

    return fault
