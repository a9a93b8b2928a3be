"""A service and the command line over SASL_SSL (SCRAM-SHA-512) and ACL Redis.

Events go in through the framework's producer, are handled with dedup claimed in
the ACL-protected Redis, and come out on another topic, all over TLS with SCRAM.
The command line creates topics and lists, shows and replays dead letters on
the same listener; with a wrong password or CA it fails at once with the cause
and no traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis.asyncio as redis_asyncio

from core.streaming.errors import PermanentError
from core.streaming.infrastructure.message_producer import MessageProducer
from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from core.streaming.reliability.deduplication_manager import DeduplicationManager
from core.streaming.topic_reader import read_topic
from tests.security.conftest import SecureInfra

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 20


async def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_service_round_trip_with_dedup_over_sasl_ssl_and_acl_redis(
    secure_infra: SecureInfra,
) -> None:
    settings = secure_infra.settings()
    name = f"rt-{uuid4().hex[:8]}"
    source, sink, group = f"{name}.in", f"{name}.out", f"{name}.g"
    handled: list[int] = []
    service: Any = None

    async def handle(event: dict[str, Any]) -> None:
        n = event["data"]["n"]
        if n < 0:
            raise PermanentError("negative numbers are poison")
        handled.append(n)
        await service.producer.send(sink, str(n), {"double": 2 * n}, "doubled")

    service = (
        StreamServiceBuilder(name, settings.redpanda, settings)
        .with_redis()
        .add_producer(topics=[sink])
        .add_consumer_handler([source], group, handle)
        .build()
    )
    await service.start()
    feeder = MessageProducer(settings.redpanda, f"{name}-feeder")
    try:
        ids = await feeder.send_many(source, [(str(i), {"n": i}) for i in range(EVENTS)], "n")
        # The same event delivered again (same id): dedup must skip it.
        await feeder.send(source, "0", {"n": 0}, "n", event_id=ids[0])
        await feeder.send(source, "bad", {"n": -1}, "n")
        await _wait(lambda: len(handled) >= EVENTS, 60, "all events handled")
        layer = service.flows[0].layer
        await _wait(lambda: layer.outcomes["dead_lettered"] == 1, 30, "the poison dead-lettered")
        await _wait(lambda: layer.outcomes["duplicate"] >= 1, 30, "the duplicate skipped")
    finally:
        await feeder.stop()
        await service.stop()
    assert sorted(handled) == list(range(EVENTS))

    outputs = await read_topic(settings.redpanda, sink, timeout_s=30)
    doubles = sorted(orjson.loads(r.value)["data"]["double"] for r in outputs if r.value)
    assert doubles == [2 * i for i in range(EVENTS)]

    client = redis_asyncio.Redis.from_url(secure_infra.redis_url())
    try:
        store = DeduplicationManager(client, name, consumer_group=group)
        states = [(await store.state(event_id))[0] for event_id in ids]
        assert states == ["done"] * EVENTS
    finally:
        await client.aclose()


def _cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - began


def test_cli_over_sasl_ssl_and_its_failures(secure_infra: SecureInfra) -> None:
    namespace = f"sec{uuid4().hex[:6]}"
    env = {**secure_infra.env(), "TRADESTREAM_BROKER_NAMESPACE": namespace}
    ensured, _ = _cli(env, "topics", "ensure", "--partitions", "1")
    assert ensured.returncode == 0, ensured.stderr[-2000:]
    assert f"{namespace}.signals.raw.dlq" in ensured.stdout and "created" in ensured.stdout

    listed, _ = _cli(env, "dlq", "list", f"{namespace}.signals.raw.dlq")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "0 dead letters" in listed.stdout

    failures = {
        "wrong password": (
            {"TRADESTREAM_REDPANDA__SASL_PASSWORD": "wrong-password-123"},
            "authentication failed",
        ),
        "wrong CA": (
            {"TRADESTREAM_REDPANDA__SSL_CAFILE": secure_infra.other_ca},
            "certificate verification failed",
        ),
        "missing CA": (
            {"TRADESTREAM_REDPANDA__SSL_CAFILE": "/nonexistent/ca.pem"},
            "does not exist: /nonexistent/ca.pem",
        ),
    }
    for what, (change, needle) in failures.items():
        bad_env = {**env, **change, "TRADESTREAM_REDPANDA__CONNECT_TIMEOUT_S": "30"}
        for command in (
            ["dlq", "list", f"{namespace}.signals.raw.dlq"],
            ["dlq", "replay", f"{namespace}.signals.raw.dlq", "--all", "--yes"],
            ["topics", "ensure"],
        ):
            proc, took = _cli(bad_env, *command)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 1, (what, command, output[-2000:])
            assert needle in output, (what, command, output[-2000:])
            assert "Traceback" not in output, (what, command, output[-2000:])
            assert took < 15, (what, command, took)  # interpreter start included
            for secret in [*secure_infra.secrets, "wrong-password-123"]:
                assert secret not in output


async def test_dedup_over_tls_redis_with_a_private_ca_and_a_client_certificate(
    secure_infra: SecureInfra,
) -> None:
    from core.streaming.infrastructure.connection_manager import ConnectionManager

    settings = secure_infra.settings(tls_redis=True)
    settings = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(
                update={
                    "ssl_certfile": str(secure_infra.directory / "client.pem"),
                    "ssl_keyfile": str(secure_infra.directory / "client.key"),
                }
            )
        }
    )
    name = f"tls-{uuid4().hex[:8]}"
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    service = (
        StreamServiceBuilder(name, settings.redpanda, settings)
        .with_redis()
        .add_consumer_handler([f"{name}.in"], f"{name}.g", handle)
        .build()
    )
    await service.start()
    feeder = MessageProducer(settings.redpanda, f"{name}-feeder")
    try:
        ids = await feeder.send_many(f"{name}.in", [(str(i), {"n": i}) for i in range(10)], "n")
        await feeder.send(f"{name}.in", "0", {"n": 0}, "n", event_id=ids[0])
        layer = service.flows[0].layer
        await _wait(lambda: len(handled) >= 10 and layer.outcomes["duplicate"] >= 1, 60, "dedup")
    finally:
        await feeder.stop()
        await service.stop()
    assert sorted(handled) == list(range(10))

    manager = ConnectionManager(settings, use_redis=True)
    await manager.start()
    try:
        store = DeduplicationManager(manager.redis, name, consumer_group=f"{name}.g")
        assert await store.state(ids[0]) == ("done", 0)
    finally:
        await manager.stop()


async def test_tls_without_verification_connects_and_is_warned(
    secure_infra: SecureInfra, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pydantic import SecretStr

    from core.config.settings import RedisSettings, Settings
    from core.streaming.infrastructure.connection_manager import ConnectionManager

    redis = RedisSettings(url=SecretStr(secure_infra.redis_url(tls=True)), ssl_verify=False)
    settings = Settings().model_copy(update={"redpanda": secure_infra.redpanda(), "redis": redis})
    manager = ConnectionManager(settings, use_redis=True)
    with caplog.at_level(logging.WARNING):
        await manager.start()
    try:
        assert (await manager.health())["redis"] == "ok"
    finally:
        await manager.stop()
    warned = [r.getMessage() for r in caplog.records if "verification is off" in r.getMessage()]
    assert warned and f"127.0.0.1:{secure_infra.redis_tls_port}" in warned[0]
    assert secure_infra.redis_password not in warned[0]
