"""A service process sent SIGTERM under load drains, commits exactly what it handled, exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core.config.settings import RedpandaSettings
from core.streaming.infrastructure.message_producer import MessageProducer
from tests.conftest import KafkaAdmin
from tests.integration.orchestration.helpers import committed_offsets

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]


async def test_sigterm_under_load_drains_and_commits_exactly_the_handled(
    kafka_bootstrap: str, kafka_admin: KafkaAdmin, unique_name: str, tmp_path: Path
) -> None:
    partitions = 2
    topic = await kafka_admin.create_topic(unique_name, partitions=partitions)
    producer = MessageProducer(RedpandaSettings(bootstrap_servers=kafka_bootstrap), "feeder")
    # Explicit partitions so the handled log can name them.
    for i in range(4_000):
        await producer.enqueue(
            topic, None, {"p": i % partitions, "i": i}, "t", partition=i % partitions
        )
    await producer.flush()
    await producer.stop()
    group = f"{unique_name}-g"
    outfile = tmp_path / "handled.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests/integration/orchestration/sigterm_service.py"),
        kafka_bootstrap,
        topic,
        group,
        str(outfile),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 60
    while not outfile.exists() or len(outfile.read_text().splitlines()) < 300:
        assert time.monotonic() < deadline, "service handled nothing"
        assert proc.returncode is None, "service exited early"
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
    handled: dict[int, set[int]] = {p: set() for p in range(partitions)}
    for line in outfile.read_text().splitlines():
        p, i = map(int, line.split())
        handled[p].add(i // partitions)  # the record's offset within its partition
    committed = await committed_offsets(kafka_bootstrap, group, topic, partitions)
    total = sum(len(v) for v in handled.values())
    assert 300 <= total < 4_000, "SIGTERM should land mid-stream"
    for p in range(partitions):
        # Handled in order per partition: the committed offset covers exactly what ran.
        assert handled[p] == set(range(committed[p])), f"partition {p}"
