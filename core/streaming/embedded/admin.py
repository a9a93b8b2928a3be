"""The embedded broker's admin client: create, list and delete topics."""

from __future__ import annotations

from collections.abc import Sequence

from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.errors import ClientClosedError
from core.streaming.types import TopicSpec
from core.topic_names import validate_topic_name


class InMemoryAdmin:
    """An admin client on the embedded broker (an ``AdminClient``)."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self._started = False

    async def start(self) -> None:
        """Make the client usable (idempotent)."""
        self._started = True

    async def close(self) -> None:
        """Close the client (idempotent); ``start`` may open it again."""
        self._started = False

    def _check(self) -> None:
        if not self._started:
            raise ClientClosedError("admin client is not started")

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the topics that do not exist yet; returns the names created."""
        self._check()
        for spec in specs:
            validate_topic_name(spec.name)
            if spec.partitions <= 0:
                raise ValueError(f"topic {spec.name!r}: partitions must be positive")
            if spec.replication_factor <= 0:
                raise ValueError(f"topic {spec.name!r}: replication_factor must be positive")
        return [
            spec.name
            for spec in specs
            if self._broker.create_topic(spec.name, spec.partitions, configs=spec.configs)
        ]

    async def list_topics(self) -> set[str]:
        """Names of all topics."""
        self._check()
        return set(self._broker.topics())

    async def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics with their records and committed offsets; missing ones are ignored."""
        self._check()
        for name in names:
            self._broker.delete_topic(name)
