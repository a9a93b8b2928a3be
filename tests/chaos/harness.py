"""Moving parts of a chaos run: workload instances, the feeder, and the servers under them.

Everything here talks only to 127.0.0.1, is bounded in time, and ends only the
processes it started (by PID).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config.settings import RedpandaSettings
from core.streaming.infrastructure.message_producer import MessageProducer, PendingSend

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Infra:
    """The servers of a run and how to hurt them.

    ``kafka_cluster_env`` is set when the broker is the 3-node cluster of
    ``scripts/kafka-cluster.sh`` (brokers can be killed); ``redis_pids`` are
    the redis-server processes a Redis stall stops; ``redis_cluster_env`` is set
    for the Redis Cluster of ``scripts/redis-cluster.sh`` (masters can fail over).
    """

    bootstrap: str
    redis_url: str
    replication: int = 1
    kafka_cluster_env: dict[str, str] | None = None
    redis_pids: list[int] = field(default_factory=list)
    redis_cluster_env: dict[str, str] | None = None

    async def script(self, name: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run ``scripts/<name> args`` and return its stdout; fail on a non-zero exit."""
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(ROOT / "scripts" / name),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed: {err.decode()[-2000:]}")
        return out.decode()


class Instance:
    """One workload process (``tests.chaos.workload``)."""

    def __init__(self, name: str, env: dict[str, str], run_dir: Path) -> None:
        self.name = name
        self.env = env
        self.run_dir = run_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        log = os.open(self.run_dir / f"{self.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.chaos.workload",
                self.name,
                cwd=str(ROOT),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(log)
        self.started_at = time.monotonic()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        marker = self.run_dir / f"ready-{self.name}-{self.pid}"
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if not self.running:
                raise RuntimeError(f"{self.name} exited during start: see {self.name}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s} s")
            await asyncio.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, sig)

    async def terminate(self, timeout_s: float = 45.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    async def kill9(self) -> None:
        if self.running:
            self.proc.kill()  # type: ignore[union-attr]
            await self.proc.wait()  # type: ignore[union-attr]


class Pool:
    """The instances of one run; names are never reused, so each log is one process."""

    def __init__(self, env: dict[str, str], run_dir: Path) -> None:
        self.env = env
        self.run_dir = run_dir
        self.instances: list[Instance] = []
        self._next = 1

    async def spawn(self, *, wait: bool = True) -> Instance:
        instance = Instance(f"i{self._next}", self.env, self.run_dir)
        self._next += 1
        self.instances.append(instance)
        await instance.start()
        if wait:
            await instance.wait_ready()
        return instance

    def running(self) -> list[Instance]:
        return [i for i in self.instances if i.running]

    async def stop_all(self, timeout_s: float = 45.0) -> dict[str, int | None]:
        codes = await asyncio.gather(*(i.terminate(timeout_s) for i in self.instances))
        return {i.name: c for i, c in zip(self.instances, codes, strict=True)}


@dataclass
class FeedStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    poison: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def rate(self) -> float:
        """Acknowledged inputs per second over the feeding time."""
        span = self.ended - self.started
        return self.acked / span if span > 0 else 0.0


class Feeder:
    """Publishes ``{"n", "t", "poison"}`` events at a steady rate through the framework.

    Every ``poison_every``-th event is poison. Sends are not awaited one by one, so a
    slow acknowledgement (a broker failing over) does not lower the offered rate;
    sends whose acknowledgement fails are counted, not inputs.
    """

    def __init__(self, bootstrap: str, topic: str, rate: float, poison_every: int = 100) -> None:
        self.config = RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=30)
        self.topic = topic
        self.rate = rate
        self.poison_every = poison_every
        self.stats = FeedStats()

    async def run(self, duration_s: float) -> FeedStats:
        producer = MessageProducer(self.config, "chaos-feeder")
        pending: list[PendingSend] = []
        stats = self.stats
        stats.started = time.monotonic()
        try:
            n = 0
            while True:
                due = stats.started + n / self.rate
                now = time.monotonic()
                if due - stats.started >= duration_s:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                poison = self.poison_every > 0 and n % self.poison_every == self.poison_every - 1
                data = {"n": n, "t": time.monotonic(), "poison": poison}
                pending.append(await producer.enqueue(self.topic, str(n % 64), data, "chaos.in"))
                stats.sent += 1
                stats.poison += int(poison)
                n += 1
            stats.ended = time.monotonic()
            results = await asyncio.gather(*(p.ack for p in pending), return_exceptions=True)
            stats.failed = sum(isinstance(r, BaseException) for r in results)
            stats.acked = len(results) - stats.failed
        finally:
            await producer.stop()
        return stats
