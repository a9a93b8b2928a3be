"""The embedded in-memory broker and its process-wide registry by ``memory://`` URL.

``InMemoryBroker`` keeps topics of partitioned logs and consumer groups with committed
offsets; the clients in ``consumer.py``, ``producer.py`` and ``admin.py`` work on it.
Everything runs inside one event loop; no mutation awaits halfway, so concurrent tasks
always see consistent state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from core.streaming.embedded.errors import UnknownTopicOrPartitionError
from core.streaming.embedded.group import ConsumerGroup
from core.streaming.embedded.log import PartitionLog, record_batch_size
from core.streaming.embedded.partitioner import RoundRobin, partition_for_key
from core.streaming.embedded.transactions import TransactionCoordinator
from core.streaming.errors import EmptyRecordError, MessageTooLargeError, TopicCreationError
from core.streaming.types import Headers, Record, TopicPartition
from core.topic_names import InvalidTopicNameError, validate_topic_name

MEMORY_SCHEME = "memory://"
DEFAULT_BROKER_NAME = "default"
#: Kafka's default ``message.max.bytes``: 1 MiB plus the 12-byte log overhead.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
#: The topic config that overrides ``message.max.bytes`` for one topic.
MAX_MESSAGE_BYTES_CONFIG = "max.message.bytes"


class Subscriber(Protocol):
    """Who wants to hear of new records: a consumer and its subscribed topics."""

    @property
    def topics(self) -> frozenset[str]: ...

    def notify_data(self) -> None: ...


class _Topic:
    __slots__ = ("configs", "max_message_bytes", "name", "partitions")

    def __init__(
        self, name: str, partitions: int, retention_records: int | None, configs: Mapping[str, str]
    ) -> None:
        self.name = name
        self.configs = dict(configs)
        self.partitions = [PartitionLog(name, p, retention_records) for p in range(partitions)]
        limit = self.configs.get(MAX_MESSAGE_BYTES_CONFIG)
        self.max_message_bytes = None if limit is None else _positive_int(name, limit)


def _positive_int(topic: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise TopicCreationError(
            f"topic {topic!r}: invalid value {value!r} for {MAX_MESSAGE_BYTES_CONFIG}, "
            "expected a positive integer"
        )
    return number


def collision_key(name: str) -> str:
    """Kafka's name under which ``x.y`` and ``x_y`` are the same topic (metric names)."""
    return name.replace(".", "_")


class InMemoryBroker:
    """A Kafka stand-in living in this process: topics, partitions, groups, offsets.

    Args:
        default_partitions: partitions of auto-created topics.
        auto_create_topics: create a topic on first produce (Kafka's
            ``auto.create.topics.enable``); when off, producing to a missing topic
            raises ``UnknownTopicOrPartitionError``.
        retention_records: keep at most this many records per partition, dropping
            the oldest (None keeps everything).
        max_message_bytes: largest record batch the broker accepts (Kafka's
            ``message.max.bytes``); a topic's ``max.message.bytes`` config
            overrides it for that topic. Records are checked as one-record
            batches, exactly sized.
    """

    def __init__(
        self,
        default_partitions: int = 3,
        auto_create_topics: bool = True,
        retention_records: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if default_partitions <= 0:
            raise ValueError(f"default_partitions must be positive, got {default_partitions}")
        if retention_records is not None and retention_records <= 0:
            raise ValueError(f"retention_records must be positive, got {retention_records}")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.default_partitions = default_partitions
        self.auto_create_topics = auto_create_topics
        self.retention_records = retention_records
        self.max_message_bytes = max_message_bytes
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, ConsumerGroup] = {}
        self._watchers: dict[str, set[Subscriber]] = {}
        self._round_robin = RoundRobin()
        #: Transactional ids, their epochs and open transactions.
        self.transactions = TransactionCoordinator(self)

    def __repr__(self) -> str:
        return f"InMemoryBroker(topics={len(self._topics)}, groups={len(self._groups)})"

    # ------------------------------------------------------------------ topics

    def create_topic(
        self, name: str, partitions: int | None = None, *, configs: Mapping[str, str] | None = None
    ) -> bool:
        """Create ``name``; False if it already exists (its partitions are left alone).

        Raises ``InvalidTopicNameError`` for an illegal name or one that collides with
        an existing topic (``x.y`` against ``x_y``), and ``TopicCreationError`` for a
        partition count below 1 or a bad ``max.message.bytes``.
        """
        validate_topic_name(name)
        count = self.default_partitions if partitions is None else partitions
        if isinstance(count, bool) or count <= 0:
            raise TopicCreationError(
                f"topic {name!r}: number of partitions must be positive, got {count}"
            )
        if name in self._topics:
            return False
        key = collision_key(name)
        for other in self._topics:
            if collision_key(other) == key:
                raise InvalidTopicNameError(f"Topic {name!r} collides with existing topic: {other}")
        self._topics[name] = _Topic(name, count, self.retention_records, configs or {})
        self._rebalance_subscribers(name)
        return True

    def ensure_topic(self, name: str) -> int:
        """Partition count of ``name``, creating it if auto-creation is on."""
        topic = self._topic_for_write(name)
        return len(topic.partitions)

    def delete_topic(self, name: str) -> bool:
        """Delete ``name``, its records and its committed offsets; False if missing.

        With auto-creation on, a topic a live group member still subscribes to comes
        back at once, empty, with the default partition count: a Kafka consumer's
        next metadata request re-creates it the same way.
        """
        if self._topics.pop(name, None) is None:
            return False
        for group in self._groups.values():
            for tp in [tp for tp in group.committed if tp.topic == name]:
                del group.committed[tp]
        subscribed = any(name in group.subscribed_topics() for group in self._groups.values())
        if self.auto_create_topics and subscribed:
            self.create_topic(name)
        else:
            self._rebalance_subscribers(name)
        return True

    def topics(self) -> dict[str, int]:
        """Partition count by topic name."""
        return {name: len(topic.partitions) for name, topic in self._topics.items()}

    def partition_log(self, tp: TopicPartition) -> PartitionLog | None:
        """The log of ``tp``, or None if there is no such partition."""
        topic = self._topics.get(tp.topic)
        if topic is None or not 0 <= tp.partition < len(topic.partitions):
            return None
        return topic.partitions[tp.partition]

    def partition_count(self, name: str) -> int:
        """Partitions of topic ``name``; raises ``UnknownTopicOrPartitionError`` if missing."""
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return len(topic.partitions)

    def _partitions_if_exists(self, name: str) -> int | None:
        topic = self._topics.get(name)
        return None if topic is None else len(topic.partitions)

    def _topic_for_write(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        validate_topic_name(name)
        if not self.auto_create_topics:
            raise UnknownTopicOrPartitionError(
                f"topic {name!r} does not exist and auto-creation is off"
            )
        try:
            self.create_topic(name)
        except InvalidTopicNameError as exc:
            # Kafka answers a metadata request for such a name with an unknown topic.
            raise UnknownTopicOrPartitionError(f"topic {name!r} cannot be created: {exc}") from exc
        return self._topics[name]

    def _log_or_raise(self, tp: TopicPartition) -> PartitionLog:
        log = self.partition_log(tp)
        if log is None:
            raise UnknownTopicOrPartitionError(f"no partition {tp.partition} of topic {tp.topic!r}")
        return log

    # ------------------------------------------------------------------ writing

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        timestamp_ms: int | None = None,
        round_robin: RoundRobin | None = None,
    ) -> Record:
        """Store one record as a producer would and return it with its offset.

        The partition is ``partition`` if given, else Kafka's murmur2 choice for
        ``key``, else the next one in turn. Raises ``EmptyRecordError`` without key
        and value, ``UnknownTopicOrPartitionError`` for a missing topic (without
        auto-creation) or partition, and ``MessageTooLargeError`` when the record,
        as a one-record batch, is above the topic's ``max.message.bytes`` (or the
        broker's ``max_message_bytes``).
        """
        if key is None and value is None:
            raise EmptyRecordError(f"record for {topic} has neither key nor value")
        headers = tuple(headers)
        target = self._topic_for_write(topic)
        limit = target.max_message_bytes or self.max_message_bytes
        size = record_batch_size(key, value, headers)
        if size > limit:
            raise MessageTooLargeError(
                f"record for {topic} is {size} bytes as a record batch, above the topic's "
                f"limit of {limit} bytes (max.message.bytes); nothing was stored"
            )
        count = len(target.partitions)
        if partition is None:
            if key is not None:
                partition = partition_for_key(key, count)
            else:
                partition = (round_robin or self._round_robin).choose(topic, count)
        elif isinstance(partition, bool) or not 0 <= partition < count:
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has partitions 0..{count - 1}, not {partition!r}"
            )
        stamp = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        record = target.partitions[partition].append(key, value, headers, stamp)
        self.notify(topic)
        return record

    def notify(self, topic: str) -> None:
        """Wake the consumers of ``topic`` (new records, or a transaction ended)."""
        for consumer in self._watchers.get(topic, ()):
            consumer.notify_data()

    # ------------------------------------------------------------------ groups

    def group(self, group_id: str) -> ConsumerGroup:
        """The group ``group_id``, created on first use."""
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = ConsumerGroup(group_id, self._partitions_if_exists)
        return group

    def watch(self, consumer: Subscriber) -> None:
        """Wake ``consumer`` whenever one of its topics gets a record."""
        for topic in consumer.topics:
            self._watchers.setdefault(topic, set()).add(consumer)

    def unwatch(self, consumer: Subscriber) -> None:
        """Stop waking ``consumer``."""
        for topic in consumer.topics:
            watchers = self._watchers.get(topic)
            if watchers is not None:
                watchers.discard(consumer)
                if not watchers:
                    del self._watchers[topic]

    def _rebalance_subscribers(self, topic: str) -> None:
        for group in self._groups.values():
            if topic in group.subscribed_topics():
                group.request_rebalance()

    # ------------------------------------------------------------------ inspection

    def records(
        self, topic: str, partition: int | None = None, *, committed: bool = False
    ) -> list[Record]:
        """Retained records of ``topic`` (one partition, or all in partition order).

        Transaction markers are left out; ``committed=True`` shows what a
        ``read_committed`` consumer sees (no aborted records, nothing from the last
        stable offset on).
        """
        target = self._topics.get(topic)
        if target is None:
            raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
        if partition is None:
            return [r for log in target.partitions for r in log.retained(committed=committed)]
        log = self._log_or_raise(TopicPartition(topic, partition))
        return list(log.retained(committed=committed))

    def end_offset(self, tp: TopicPartition) -> int:
        """High watermark of ``tp``: the offset of the next record."""
        return self._log_or_raise(tp).end_offset

    def start_offset(self, tp: TopicPartition) -> int:
        """Log start offset of ``tp``: the oldest retained record's offset."""
        return self._log_or_raise(tp).start_offset

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """Offset committed by ``group`` for ``tp``, or None."""
        found = self._groups.get(group)
        return None if found is None else found.committed.get(tp)

    def lag(self, group: str) -> dict[TopicPartition, int]:
        """Records not yet committed by ``group``, per partition.

        Covers every partition of the topics the group's members subscribe to and of
        the topics it has committed offsets in. Without a commit the lag counts from
        the log start.
        """
        found = self._groups.get(group)
        if found is None:
            return {}
        topics = found.subscribed_topics() | {tp.topic for tp in found.committed}
        result: dict[TopicPartition, int] = {}
        for name in sorted(topics):
            target = self._topics.get(name)
            if target is None:
                continue
            for log in target.partitions:
                tp = TopicPartition(name, log.partition)
                committed = found.committed.get(tp)
                base = log.start_offset if committed is None else committed
                result[tp] = max(0, log.end_offset - base)
        return result

    def groups(self) -> set[str]:
        """Ids of every group that has had a member or a commit."""
        return set(self._groups)

    def group_assignment(self, group: str) -> dict[str, set[TopicPartition]]:
        """The current assignment of ``group`` by member id."""
        found = self._groups.get(group)
        if found is None:
            return {}
        return {member: set(tps) for member, tps in found.assignment().items()}


# --------------------------------------------------------------------------- registry

_brokers: dict[str, InMemoryBroker] = {}


def broker_name(url: str) -> str:
    """The registry key of a ``memory://`` URL; ``memory://`` means ``memory://default``."""
    if not url.startswith(MEMORY_SCHEME):
        raise ValueError(f"expected a {MEMORY_SCHEME} URL, got {url!r}")
    return url[len(MEMORY_SCHEME) :].strip().strip("/") or DEFAULT_BROKER_NAME


def get_broker(url: str = MEMORY_SCHEME, **options: Any) -> InMemoryBroker:
    """The process-wide broker for ``url``, created on first use (with ``options``).

    Every client made from the same URL shares it, as clients of one Kafka cluster
    share its data. ``options`` are :class:`InMemoryBroker` arguments; they apply
    only when this call creates the broker.
    """
    name = broker_name(url)
    broker = _brokers.get(name)
    if broker is None:
        broker = _brokers[name] = InMemoryBroker(**options)
    return broker


def reset_broker(url: str = MEMORY_SCHEME, **options: Any) -> InMemoryBroker:
    """Replace the broker for ``url`` with a fresh one built with ``options``."""
    broker = _brokers[broker_name(url)] = InMemoryBroker(**options)
    return broker


def drop_broker(url: str = MEMORY_SCHEME) -> None:
    """Forget the broker for ``url``; the next ``get_broker`` starts empty."""
    _brokers.pop(broker_name(url), None)
