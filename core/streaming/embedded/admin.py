"""The embedded broker's admin client: create, list and delete topics."""

from __future__ import annotations

from collections.abc import Sequence

from core.streaming.embedded.broker import InMemoryBroker
from core.streaming.errors import ClientClosedError, TopicCreationError
from core.streaming.types import TopicSpec
from core.topic_names import InvalidTopicNameError, validate_topic_name

#: The embedded broker is one broker: replication factors above 1 cannot be met.
BROKER_COUNT = 1


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
        """Create the topics that do not exist yet; returns the names created.

        As Kafka does, each topic is created or refused on its own; after the
        others are made, the first refusal is raised: ``InvalidTopicNameError`` for
        an illegal or colliding name, ``TopicCreationError`` for a partition count
        below 1, a replication factor other than 1 (the embedded broker is a single
        broker) or a bad ``max.message.bytes``.
        """
        self._check()
        for spec in specs:
            validate_topic_name(spec.name)  # checked by the client, before any is created
        created: list[str] = []
        refusals: list[Exception] = []
        for spec in specs:
            try:
                if not 1 <= spec.replication_factor <= BROKER_COUNT:
                    raise TopicCreationError(
                        f"topic {spec.name!r}: replication factor {spec.replication_factor} "
                        f"cannot be reached with {BROKER_COUNT} broker"
                    )
                if self._broker.create_topic(spec.name, spec.partitions, configs=spec.configs):
                    created.append(spec.name)
            except (InvalidTopicNameError, TopicCreationError) as exc:
                refusals.append(exc)
        if refusals:
            raise refusals[0]
        return created

    async def list_topics(self) -> set[str]:
        """Names of all topics."""
        self._check()
        return set(self._broker.topics())

    async def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics with their records and committed offsets; missing ones are ignored."""
        self._check()
        for name in names:
            self._broker.delete_topic(name)
