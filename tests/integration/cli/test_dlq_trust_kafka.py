"""Dead-letter tools on real Kafka: hostile headers, forged targets, confirmation, double replay.

Also: reading a topic that does not exist returns at once, and ``topic tail --follow``
prints new records until interrupted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from core.config.settings import RedpandaSettings
from core.streaming.topic_reader import read_topic
from services.cli.main import app
from tests.conftest import KafkaAdmin
from tests.integration.orchestration.helpers import produce

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


async def invoke(bootstrap: str, *args: str, stdin: str | None = None) -> Result:
    env = {"TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS": bootstrap, "COLUMNS": "100"}
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin, env=env)


async def dead_letter(
    bootstrap: str, dlq: str, headers: list[tuple[str, bytes | None]], value: bytes = b"{}"
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(dlq, value, key=b"k", headers=headers, partition=0)
    finally:
        await producer.stop()


def origin(topic: str, error: bytes = b"ValueError") -> list[tuple[str, bytes | None]]:
    return [
        ("dlq.original.topic", topic.encode()),
        ("dlq.original.partition", b"0"),
        ("dlq.original.offset", b"7"),
        ("dlq.exception.type", error),
    ]


async def test_reading_a_missing_topic_returns_at_once(kafka_bootstrap: str) -> None:
    started = time.monotonic()
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    assert await read_topic(config, f"missing-{os.getpid()}-{time.time_ns()}", timeout_s=15) == []
    assert time.monotonic() - started < 5


async def test_a_null_header_value_breaks_no_dead_letter_command(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    source = await kafka_admin.create_topic(unique_name, partitions=1)
    dlq = await kafka_admin.create_topic(f"{source}.dlq", partitions=1)
    await dead_letter(kafka_bootstrap, dlq, [*origin(source), ("note", None)])
    await dead_letter(
        kafka_bootstrap, dlq, [*origin(source), ("dlq.exception.type", None), ("x", b"\xff")]
    )
    listed = await invoke(kafka_bootstrap, "dlq", "list", dlq)
    assert listed.exit_code == 0, listed.output
    assert "2 dead letters" in listed.output
    shown = await invoke(kafka_bootstrap, "dlq", "show", dlq, "0:0")
    assert shown.exit_code == 0, shown.output
    assert "<null>" in shown.output
    replay = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "--error-type", "value", "--yes")
    assert replay.exit_code == 0, replay.output
    assert "replayed 0:0 ->" in replay.output and "0:1" not in replay.output
    [copy] = await read_topic(RedpandaSettings(bootstrap_servers=kafka_bootstrap), source)
    assert ("note", None) in list(copy.headers)  # a null header travels as it is
    assert ("dlq.replayed.from", f"{dlq}[0]@0".encode()) in list(copy.headers)


async def test_a_forged_origin_header_is_refused_and_nothing_is_sent(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    source = await kafka_admin.create_topic(f"{unique_name}.signals.validated", partitions=1)
    orders = await kafka_admin.create_topic(f"{unique_name}.orders", partitions=1)
    dlq = await kafka_admin.create_topic(f"{source}.dlq", partitions=1)
    await dead_letter(kafka_bootstrap, dlq, origin(orders))
    refused = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "--all", "--yes")
    assert refused.exit_code == 1
    assert f"says it came from '{orders}', not {source}" in refused.output
    aimed = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "--all", "--yes", "--to", source)
    assert aimed.exit_code == 1  # naming the right topic does not help: the header disagrees
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap)
    assert await read_topic(config, orders) == []
    assert await read_topic(config, source) == []


async def test_replay_all_asks_first_and_a_second_replay_needs_force(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    source = await kafka_admin.create_topic(unique_name, partitions=1)
    dlq = await kafka_admin.create_topic(f"{source}.dlq", partitions=1)
    for _ in range(2):
        await dead_letter(kafka_bootstrap, dlq, origin(source))
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap)

    declined = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "--all", stdin="n\n")
    assert declined.exit_code == 1
    assert f"Send 2 record(s) to {source}?" in declined.output
    assert "0:0" in declined.output and "0:1" in declined.output  # shown before asking
    assert await read_topic(config, source) == []

    accepted = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "--all", stdin="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert len(await read_topic(config, source)) == 2

    listed = await invoke(kafka_bootstrap, "dlq", "list", dlq, "--json")
    items = [orjson.loads(line) for line in listed.output.splitlines()]
    assert all(item["replayed_at"] and item["replayed_to"].startswith(source) for item in items)

    twice = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "-p", "0:1", "--yes")
    assert twice.exit_code == 1 and "0:1 was already replayed at" in twice.output
    assert len(await read_topic(config, source)) == 2
    forced = await invoke(kafka_bootstrap, "dlq", "replay", dlq, "-p", "0:1", "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert len(await read_topic(config, source)) == 3


async def test_topic_tail_follow_prints_new_records_until_interrupted(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=2)
    await produce(kafka_bootstrap, topic, [("a", {"n": 1})])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTREAM_")}
    env["TRADESTREAM_REDPANDA__BOOTSTRAP_SERVERS"] = kafka_bootstrap
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        "topic",
        "tail",
        topic,
        "--follow",
        "--json",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["value"]["data"] == {"n": 1}
        await produce(kafka_bootstrap, topic, [("b", {"n": 2})])
        second = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert (second["key"], second["value"]["data"]) == ("b", {"n": 2})
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
