"""The embedded in-memory Kafka stand-in, selected by ``memory://`` bootstrap servers.

``get_broker(url)`` returns the process-wide broker of a URL; ``InMemoryConsumer``,
``InMemoryProducer`` and ``InMemoryAdmin`` on it implement the client surface of
``core.streaming.broker_api`` with Kafka's semantics: murmur2 key partitioning, consumer
groups with eager rebalances, committed offsets and redelivery from the last commit,
and transactions (``InMemoryTransactionalProducer``, ``read_committed``).
"""

from core.streaming.embedded.admin import InMemoryAdmin
from core.streaming.embedded.broker import (
    InMemoryBroker,
    broker_name,
    drop_broker,
    get_broker,
    reset_broker,
)
from core.streaming.embedded.consumer import InMemoryConsumer
from core.streaming.embedded.errors import (
    OffsetOutOfRangeError,
    PartitionNotAssignedError,
    UnknownTopicOrPartitionError,
)
from core.streaming.embedded.partitioner import murmur2, partition_for_key
from core.streaming.embedded.producer import InMemoryProducer
from core.streaming.embedded.transactional_producer import InMemoryTransactionalProducer

__all__ = [
    "InMemoryAdmin",
    "InMemoryBroker",
    "InMemoryConsumer",
    "InMemoryProducer",
    "InMemoryTransactionalProducer",
    "OffsetOutOfRangeError",
    "PartitionNotAssignedError",
    "UnknownTopicOrPartitionError",
    "broker_name",
    "drop_broker",
    "get_broker",
    "murmur2",
    "partition_for_key",
    "reset_broker",
]
