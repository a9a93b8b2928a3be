"""A 3-broker KRaft Kafka cluster and a 3-master Redis Cluster for the cluster tests.

Each is started once per session by the project's scripts
(``scripts/kafka-cluster.sh``, ``scripts/redis-cluster.sh``) on free loopback
ports with a state directory of its own, when the suite runs under
``scripts/test.sh`` (``TRADESTREAM_TEST_INFRA``); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _free_port, _shared_kafka_libs

ROOT = Path(__file__).resolve().parents[2]


def _ports(n: int) -> list[int]:
    while True:
        ports = [_free_port() for _ in range(n)]
        if len(set(ports)) == n:
            return ports


@dataclass
class ScriptedCluster:
    """A cluster driven by one of the project's scripts, with its own ports and state."""

    script: str
    env: dict[str, str]

    def run(self, *args: str, timeout_s: float = 180) -> str:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / self.script), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{self.script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    async def arun(self, *args: str, timeout_s: float = 180) -> str:
        return await asyncio.to_thread(self.run, *args, timeout_s=timeout_s)


@dataclass
class KafkaClusterInfra(ScriptedCluster):
    bootstrap: str = ""
    ports: tuple[int, ...] = ()

    def broker_of_port(self, port: int) -> int:
        return self.ports.index(port) + 1


@dataclass
class RedisClusterInfra(ScriptedCluster):
    url: str = ""
    ports: tuple[int, ...] = ()


def _need_infra() -> None:
    if not os.environ.get("TRADESTREAM_TEST_INFRA"):
        pytest.skip("TRADESTREAM_TEST_INFRA is not set; run the suite with `bash scripts/test.sh`")


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaClusterInfra]:
    _need_infra()
    if shutil.which("java") is None:
        pytest.skip("java is not installed; the Kafka cluster needs it")
    ports = _ports(6)
    state = tmp_path_factory.mktemp("kafka-cluster")
    env = {
        **os.environ,
        "INFRA_DIR": str(state),
        "KAFKA_CLUSTER_DIR": str(state / "cluster"),
        "KAFKA_CLUSTER_PORTS": ",".join(map(str, ports[:3])),
        "KAFKA_CLUSTER_CONTROLLER_PORTS": ",".join(map(str, ports[3:])),
    }
    libs = os.environ.get("KAFKA_LIBS_DIR") or _shared_kafka_libs()
    if libs is not None:
        env["KAFKA_LIBS_DIR"] = str(libs)
    cluster = KafkaClusterInfra(
        "kafka-cluster.sh",
        env,
        bootstrap=",".join(f"127.0.0.1:{p}" for p in ports[:3]),
        ports=tuple(ports[:3]),
    )
    try:
        cluster.run("start", timeout_s=240)
        yield cluster
    finally:
        cluster.run("stop")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterInfra]:
    _need_infra()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    ports = _ports(12)
    state = tmp_path_factory.mktemp("redis-cluster")
    env = {
        **os.environ,
        "INFRA_DIR": str(state),
        "REDIS_CLUSTER_DIR": str(state / "cluster"),
        "REDIS_CLUSTER_PORTS": ",".join(map(str, ports[:6])),
        "REDIS_CLUSTER_BUS_PORTS": ",".join(map(str, ports[6:])),
    }
    cluster = RedisClusterInfra(
        "redis-cluster.sh",
        env,
        url=f"redis+cluster://127.0.0.1:{ports[0]}/0",
        ports=tuple(ports[:6]),
    )
    try:
        cluster.run("start")
        yield cluster
    finally:
        cluster.run("stop")
