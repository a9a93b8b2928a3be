"""Backends for the delivery-contract tests: the embedded default and real Kafka + Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from uuid import uuid4

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from core.config.settings import RedisSettings, RedpandaSettings, Settings
from core.streaming.embedded import get_broker
from core.streaming.testing import StreamTestHarness
from tests.conftest import KafkaAdmin


@dataclass
class Backend:
    """A harness on one backend, and topic creation with configs on it."""

    name: str
    harness: StreamTestHarness
    prefix: str
    admin: KafkaAdmin | None = None

    @property
    def settings(self) -> Settings:
        return self.harness.settings

    def topic(self, name: str) -> str:
        """A topic name unique to this test."""
        return f"{self.prefix}{name}"

    async def create_topic(
        self, name: str, partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> str:
        topic = self.topic(name)
        if self.name == "memory":
            get_broker(self.harness.broker_url).create_topic(
                topic, partitions, configs=dict(configs or {})
            )
        else:
            assert self.admin is not None
            await self.admin.create_topic(topic, partitions, configs=configs)
        return topic


@pytest.fixture(params=["memory", pytest.param("kafka", marks=[pytest.mark.kafka])])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The embedded broker with fakeredis, or the test Kafka broker with the test redis."""
    if request.param == "memory":
        async with StreamTestHarness() as harness:
            yield Backend("memory", harness, "")
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    redis_url = request.getfixturevalue("redis_url")
    settings = Settings().model_copy(
        update={
            "redpanda": RedpandaSettings(bootstrap_servers=bootstrap, connect_timeout_s=10),
            "redis": RedisSettings(url=SecretStr(redis_url)),
        }
    )
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        async with StreamTestHarness(settings, embedded=False) as harness:
            yield Backend("kafka", harness, f"c{uuid4().hex[:8]}-", KafkaAdmin(client))
    finally:
        await client.close()
