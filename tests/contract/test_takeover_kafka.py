"""After a member is killed, its partitions' new owner takes over its claims at once.

(Delivery contract 14, on real Kafka and Redis.) The dead member's dedup claims
would otherwise hold its partitions for the claim lifetime (here 120 s) while
health said ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
from tests.conftest import KafkaAdmin
from tests.contract.helpers import eventually
from tests.integration.orchestration.helpers import (
    committed_offsets,
    end_offsets,
    kafka_settings,
    produce,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


async def test_a_killed_members_claims_are_taken_over_by_the_new_owner(
    kafka_bootstrap: str,
    redis_url: str,
    kafka_admin: KafkaAdmin,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topic = await kafka_admin.create_topic(unique_name, partitions=1)
    group = f"{unique_name}-g"
    ids = await produce(kafka_bootstrap, topic, [("k", {"n": n}) for n in range(10)])
    started = tmp_path / "started"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests/contract/stuck_member.py"),
        kafka_bootstrap,
        redis_url,
        topic,
        group,
        str(started),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        await eventually(started.exists, 60, "the doomed member to start its handler")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    killed_at = time.monotonic()
    handled: list[str] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["id"])

    settings = kafka_settings(kafka_bootstrap, redis_url, dedup_processing_ttl_ms=120_000)
    service = (
        StreamServiceBuilder("takeover", settings=settings)
        .with_redis()
        .add_consumer_handler([topic], group, handle)
        .build()
    )
    await service.start()
    try:
        await eventually(lambda: len(handled) == 10, 60, "the new owner to handle all")
        took = time.monotonic() - killed_at
    finally:
        await service.stop()
    assert handled == ids
    assert took < 40, f"took {took:.0f} s: the new owner waited for the dead member's claims"
    assert await committed_offsets(kafka_bootstrap, group, topic, 1) == await end_offsets(
        kafka_bootstrap, topic, 1
    )
