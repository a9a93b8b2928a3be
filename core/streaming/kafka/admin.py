"""``AdminClient`` over ``AIOKafkaAdminClient``; creating an existing topic is fine."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidConfigurationError,
    InvalidPartitionsError,
    InvalidReplicationAssignmentError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    KafkaError,
    TopicAlreadyExistsError,
)

from core.config.settings import RedpandaSettings
from core.streaming.errors import TopicCreationError
from core.streaming.kafka.connection import connection_kwargs
from core.streaming.types import TopicSpec
from core.topic_names import InvalidTopicNameError, validate_topic_name

#: Kafka error codes for a topic refused as specified, and the error we raise for each.
_INVALID_TOPIC = InvalidTopicError.errno
_SPEC_REFUSALS = {
    InvalidPartitionsError.errno,
    InvalidReplicationFactorError.errno,
    InvalidReplicationAssignmentError.errno,
    InvalidConfigurationError.errno,
}


def _refusal(name: str, code: int, message: str) -> Exception:
    text = f"creating topic {name!r} was refused (error {code}): {message}"
    if code == _INVALID_TOPIC:
        return InvalidTopicNameError(text)
    if code in _SPEC_REFUSALS:
        return TopicCreationError(text)
    other: Exception = KafkaError(text)
    return other


class KafkaAdminClient:
    """``AdminClient`` over ``AIOKafkaAdminClient``; creating an existing topic is fine."""

    def __init__(self, config: RedpandaSettings, *, client_id: str | None = None) -> None:
        self._admin = AIOKafkaAdminClient(
            client_id=client_id or f"{config.client_id}-admin",
            request_timeout_ms=config.request_timeout_ms,
            **connection_kwargs(config),
        )
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._admin.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._admin.close()

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        existing = await self.list_topics()
        wanted = [s for s in specs if validate_topic_name(s.name) not in existing]
        if not wanted:
            return []
        new = [
            NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs))
            for s in wanted
        ]
        try:
            response = await self._admin.create_topics(new)
        except TopicAlreadyExistsError:
            return []
        created: list[str] = []
        refusals: list[Exception] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                message = entry[2] if len(entry) > 2 else ""
                refusals.append(_refusal(name, code, message))
        await self._wait_visible(created)
        if refusals:
            raise refusals[0]
        return created

    async def _wait_visible(self, names: list[str], timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not set(names) <= await self.list_topics():
            if loop.time() > deadline:
                raise TimeoutError(f"topics {names} not visible after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def list_topics(self) -> set[str]:
        return set(await self._admin.list_topics())

    async def delete_topics(self, names: Sequence[str]) -> None:
        if names:
            await self._admin.delete_topics(list(names))
