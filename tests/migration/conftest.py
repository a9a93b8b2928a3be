"""Backends for the migration tests: the embedded default, and real Kafka with real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import uuid4

import pytest
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.testing import StreamTestHarness


@dataclass
class Backend:
    """A harness on one backend and a prefix that keeps this test's names apart."""

    name: str
    harness: StreamTestHarness
    prefix: str

    def settings(self, run: str, **reliability: object) -> Settings:
        """Settings of one run: its own namespace and group prefix, fast retries."""
        base = self.harness.settings
        name = f"{self.prefix}{run}"
        return base.model_copy(
            update={
                "broker_namespace": name,
                "redpanda": base.redpanda.model_copy(update={"group_id_prefix": name}),
                "reliability": base.reliability.model_copy(
                    update={
                        "retry_backoff_initial_ms": 5,
                        "retry_backoff_max_ms": 20,
                        **reliability,
                    }
                ),
            }
        )


@pytest.fixture(params=["memory", pytest.param("kafka", marks=[pytest.mark.kafka])])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The embedded broker with fakeredis, or the test Kafka broker with the test redis-server."""
    prefix = f"m{uuid4().hex[:8]}"
    if request.param == "memory":
        async with StreamTestHarness() as harness:
            yield Backend("memory", harness, prefix)
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    redis_url = request.getfixturevalue("redis_url")
    settings = Settings().model_copy(
        update={
            "redpanda": RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=10),
            "redis": RedisSettings(url=SecretStr(redis_url)),
        }
    )
    async with StreamTestHarness(settings, embedded=False) as harness:
        yield Backend("kafka", harness, prefix)
