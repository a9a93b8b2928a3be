"""Shared pytest fixtures for tests that talk to the real Kafka broker and redis.

The servers are started by ``bash scripts/test.sh``, which exports
``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``. When those are unset (plain
``pytest``), tests that need them are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from uuid import uuid4

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

_RUN_HINT = "run the suite with `bash scripts/test.sh`, which starts Kafka and redis"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the test broker (``KAFKA_BOOTSTRAP_SERVERS``)."""
    value = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not value:
        pytest.skip(f"KAFKA_BOOTSTRAP_SERVERS is not set; {_RUN_HINT}")
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test redis-server (``REDIS_URL``)."""
    value = os.environ.get("REDIS_URL")
    if not value:
        pytest.skip(f"REDIS_URL is not set; {_RUN_HINT}")
    return value


@pytest.fixture
def unique_name() -> str:
    """A short name unique to this test, for topics, groups and keys."""
    return f"t-{uuid4().hex[:10]}"


class KafkaAdmin:
    """Thin helper over ``AIOKafkaAdminClient`` for test setup."""

    def __init__(self, client: AIOKafkaAdminClient) -> None:
        self.client = client

    async def create_topic(
        self,
        name: str,
        partitions: int = 3,
        *,
        configs: Mapping[str, str] | None = None,
        wait_s: float = 30.0,
    ) -> str:
        """Create ``name`` with ``partitions`` partitions and wait until every
        partition has a leader. Returns the topic name."""
        topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            topic_configs=dict(configs or {}),
        )
        response = await self.client.create_topics([topic])
        # Errors come back per topic in the response rather than as exceptions.
        for err in response.to_object().get("topic_errors", []):
            code = err.get("error_code", 0)
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(
                    f"creating topic {name!r} failed: {code} {err.get('error_message')}"
                )
        await self.wait_for_topic(name, partitions, wait_s=wait_s)
        return name

    async def wait_for_topic(self, name: str, partitions: int, *, wait_s: float = 30.0) -> None:
        """Wait until ``name`` has ``partitions`` partitions, all with a leader."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                described = await self.client.describe_topics([name])
            except Exception:
                described = []
            for info in described:
                parts = info.get("partitions") or []
                if (
                    info.get("error_code", 0) == 0
                    and len(parts) == partitions
                    and all(p.get("leader", -1) >= 0 for p in parts)
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r} not ready after {wait_s}s: {described!r}")
            await asyncio.sleep(0.1)

    async def delete_topic(self, name: str) -> None:
        await self.client.delete_topics([name])


@pytest.fixture
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[KafkaAdmin]:
    """Admin helper bound to the test broker; use ``await kafka_admin.create_topic(...)``."""
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    try:
        yield KafkaAdmin(client)
    finally:
        await client.close()


# --------------------------------------------------------------------------- private redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of this test alone, driven by ``TRADESTREAM_REDIS_SCRIPT``.

    Stopping the shared test server would break tests running beside this one,
    so the script runs with a port and state directory of our own.
    """

    def __init__(self, script: str, state_dir: Path) -> None:
        self.script = script
        self.port = _free_port()
        self.env = {**os.environ, "REDIS_PORT": str(self.port), "INFRA_DIR": str(state_dir)}
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def run(self, command: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            self.script,
            command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, f"redis.sh {command} failed: {err.decode()}"


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    script = os.environ.get("TRADESTREAM_REDIS_SCRIPT")
    if not script:
        pytest.skip("TRADESTREAM_REDIS_SCRIPT is not set")
    server = PrivateRedis(script, tmp_path / "infra")
    await server.run("start")
    try:
        yield server
    finally:
        await server.run("stop")


# --------------------------------------------------------------------------- private kafka

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_kafka_libs() -> Path | None:
    """The jar directory of the main test broker, when its jars match the current pom.

    ``scripts/test.sh`` exports ``INFRA_DIR`` (default ``.infra``, relative to the
    repo root). A missing or stale directory is not reused: kafka.sh would re-fetch
    into it, under the main broker's feet; it fetches into the private one instead.
    """
    infra = Path(os.environ.get("INFRA_DIR") or ".infra")
    if not infra.is_absolute():
        infra = _REPO_ROOT / infra
    libs = infra / "kafka" / "libs"
    try:
        stamp = (libs / ".stamp").read_text().strip()
        pom = (_REPO_ROOT / "scripts" / "kafka" / "pom.xml").read_bytes()
    except OSError:
        return None
    return libs if stamp == hashlib.sha256(pom).hexdigest() else None


class PrivateKafka:
    """A single-node Kafka broker of this test alone, driven by ``scripts/kafka.sh``.

    Killing the shared test broker would break tests running beside this one, so
    the script runs with ports and a state directory of our own; it reuses the
    main broker's jars when it can.
    """

    def __init__(self, state_dir: Path) -> None:
        self.script = str(_REPO_ROOT / "scripts" / "kafka.sh")
        self.port = _free_port()
        self.controller_port = _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "INFRA_DIR": str(state_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
        }
        self.env.pop("KAFKA_LIBS_DIR", None)
        libs = _shared_kafka_libs()
        if libs is not None:
            self.env["KAFKA_LIBS_DIR"] = str(libs)
        self.bootstrap = f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file (kept across ``kill`` and ``resume``)."""
        return self.state_dir / "kafka" / "kafka.log"

    async def run(self, command: str, timeout_s: float = 150.0) -> None:
        """Run ``kafka.sh <command>`` (start, stop, status, kill, resume); fail on error."""
        proc = await asyncio.create_subprocess_exec(
            "bash",
            self.script,
            command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kafka.sh {command} did not finish in {timeout_s} s") from None
        assert proc.returncode == 0, f"kafka.sh {command} failed: {err.decode()}"


@pytest.fixture
async def private_kafka(tmp_path: Path) -> AsyncIterator[PrivateKafka]:
    if not os.environ.get("TRADESTREAM_TEST_INFRA"):
        pytest.skip(f"TRADESTREAM_TEST_INFRA is not set; {_RUN_HINT}")
    if shutil.which("java") is None:
        pytest.skip("java is not installed; a private Kafka broker needs it")
    server = PrivateKafka(tmp_path / "infra")
    try:
        await server.run("start")
        yield server
    finally:
        # Also after a failed start: the script may have left a broker running.
        await server.run("stop")
