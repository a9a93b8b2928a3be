"""Low-level clients: the small surface every layer above talks to, and its Kafka/Redis makers.

This is the only module that imports aiokafka and redis. The layers above use the
``ConsumerClient``, ``ProducerClient`` and ``AdminClient`` protocols, so the embedded
in-memory broker (``core.streaming.embedded``) stands in for Kafka when the bootstrap
servers are ``memory://...``, and fakeredis stands in for Redis when the Redis URL is
``memory://...``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import fakeredis
import redis.asyncio as redis_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.errors import (
    InvalidTopicError as KafkaInvalidTopicError,
)
from aiokafka.helpers import create_ssl_context
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config.settings import RedisSettings, RedpandaSettings
from core.streaming.errors import (
    ClientClosedError,
    CommitError,
    MessageTooLargeError,
    PartitionNotAssignedError,
)
from core.streaming.topic_names import validate_topic_name
from core.streaming.types import (
    FetchedRecord,
    Headers,
    RecordMetadata,
    TopicPartition,
    TopicSpec,
)

if TYPE_CHECKING:
    from core.streaming.embedded import InMemoryBroker

Redis = redis_asyncio.Redis

#: Exceptions that mean "the broker or Redis is (perhaps briefly) unreachable".
TRANSIENT_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)

#: Every error the Redis client raises (server replies such as OOM or READONLY included).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError,)

#: Exceptions that mean "this record is too large for the broker" (at send or on the ack).
TOO_LARGE_ERRORS: tuple[type[BaseException], ...] = (MessageTooLargeError, MessageSizeTooLargeError)

#: Errors after which an idempotent producer's sequence state is broken for good: every
#: later send to the partition would fail too, so the producer must be made anew.
PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
)

#: Exceptions that mean "the broker refused this and will refuse it again".
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError,)


# --------------------------------------------------------------------------- surface


@runtime_checkable
class RebalanceListener(Protocol):
    """Told when the group takes partitions away or hands new ones over."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class ConsumerClient(Protocol):
    """A group member subscribed to topics, fetching in batches, committing explicitly."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FetchedRecord]]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    async def committed(self, tp: TopicPartition) -> int | None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, *tps: TopicPartition) -> None: ...

    def resume(self, *tps: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]: ...


class ProducerClient(Protocol):
    """Sends bytes; ``send`` enqueues and returns an awaitable acknowledgement."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def flush(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


class AdminClient(Protocol):
    """Creates and lists topics."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]: ...

    async def list_topics(self) -> set[str]: ...

    async def delete_topics(self, names: Sequence[str]) -> None: ...


# --------------------------------------------------------------------------- Kafka


def _security_kwargs(config: RedpandaSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"security_protocol": config.security_protocol}
    if config.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=config.ssl_cafile, certfile=config.ssl_certfile, keyfile=config.ssl_keyfile
        )
        kwargs["ssl_context"] = context
    if config.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = config.sasl_mechanism
        kwargs["sasl_plain_username"] = config.sasl_username
        kwargs["sasl_plain_password"] = (
            config.sasl_password.get_secret_value() if config.sasl_password else None
        )
    return kwargs


def _ktp(tp: TopicPartition) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp.topic, tp.partition)


class _ListenerBridge(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[KafkaTopicPartition]) -> None:
        await self._listener.on_partitions_revoked({TopicPartition(*tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[KafkaTopicPartition]) -> None:
        await self._listener.on_partitions_assigned({TopicPartition(*tp) for tp in assigned})


class KafkaConsumerClient:
    """``ConsumerClient`` over ``AIOKafkaConsumer`` with auto-commit off."""

    def __init__(
        self,
        config: RedpandaSettings,
        topics: Sequence[str],
        group_id: str,
        *,
        listener: RebalanceListener | None = None,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
        client_id: str | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
    ) -> None:
        self._topics = [validate_topic_name(t) for t in topics]
        self._listener = listener
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_list,
            client_id=client_id or f"{config.client_id}-consumer",
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            enable_auto_commit=False,
            max_poll_records=max_poll_records,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            request_timeout_ms=config.request_timeout_ms,
            # aiokafka fetches from one broker at a time: a long wait on a caught-up
            # partition holds up partitions that have data.
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            **_security_kwargs(config),
        )
        self._started = False
        self._stopped = False

    def _check(self) -> None:
        if self._stopped:
            raise ClientClosedError("consumer is stopped")
        if not self._started:
            raise ClientClosedError("consumer is not started")

    async def start(self) -> None:
        if self._stopped:
            raise ClientClosedError("a stopped consumer cannot be restarted")
        if self._started:
            return
        await self._consumer.start()
        listener = _ListenerBridge(self._listener) if self._listener else None
        self._consumer.subscribe(self._topics, listener=listener)
        self._started = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            await self._consumer.stop()

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FetchedRecord]]:
        self._check()
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        # aiokafka's records already have the FetchedRecord attributes: no copy per record.
        return {TopicPartition(ktp.topic, ktp.partition): recs for ktp, recs in batches.items()}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check()
        if not offsets:
            return
        await self._check_commit_range(offsets)
        try:
            await self._consumer.commit({_ktp(tp): off for tp, off in offsets.items()})
        except (CommitFailedError, IllegalStateError, OffsetOutOfRangeError) as exc:
            raise CommitError(f"commit of {dict(offsets)} refused: {exc}") from exc

    async def _check_commit_range(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Refuse what Kafka would store silently: negative or beyond the high watermark."""
        unknown: list[TopicPartition] = []
        for tp, offset in offsets.items():
            if offset < 0:
                raise CommitError(f"commit of offset {offset} for {tp} is negative")
            known = self._consumer.highwater(_ktp(tp)) if tp in self.assignment() else None
            if known is None or offset > known:
                unknown.append(tp)
        if unknown:
            ends = await self.end_offsets(unknown)
            for tp in unknown:
                if offsets[tp] > ends.get(tp, 0):
                    raise CommitError(
                        f"commit of offset {offsets[tp]} for {tp} is beyond the high watermark "
                        f"{ends.get(tp, 0)}"
                    )

    def _owned(self, tps: Iterable[TopicPartition]) -> None:
        missing = set(tps) - self.assignment()
        if missing:
            raise PartitionNotAssignedError(
                f"partitions {sorted(missing)} are not assigned to this consumer"
            )

    async def committed(self, tp: TopicPartition) -> int | None:
        self._check()
        value = await self._consumer.committed(_ktp(tp))
        return int(value) if value is not None else None

    def assignment(self) -> set[TopicPartition]:
        if not self._started or self._stopped:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self, *tps: TopicPartition) -> None:
        self._check()
        self._owned(tps)
        self._consumer.pause(*(_ktp(tp) for tp in tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._check()
        self._owned(tps)
        self._consumer.resume(*(_ktp(tp) for tp in tps))

    def paused(self) -> set[TopicPartition]:
        if not self._started or self._stopped:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def highwater(self, tp: TopicPartition) -> int | None:
        self._check()
        self._owned([tp])
        value = self._consumer.highwater(_ktp(tp))
        return int(value) if value is not None else None

    async def position(self, tp: TopicPartition) -> int:
        self._check()
        self._owned([tp])
        return int(await self._consumer.position(_ktp(tp)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check()
        self._owned([tp])
        self._consumer.seek(_ktp(tp), offset)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        result = await self._consumer.end_offsets([_ktp(tp) for tp in tps])
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in result.items()}


class KafkaProducerClient:
    """``ProducerClient`` over an idempotent ``AIOKafkaProducer`` with acks=all."""

    def __init__(
        self,
        config: RedpandaSettings,
        *,
        client_id: str | None = None,
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        idempotent: bool = True,
    ) -> None:
        compression = None if config.compression_type == "none" else config.compression_type
        self._producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap_list,
            client_id=client_id or f"{config.client_id}-producer",
            enable_idempotence=idempotent,
            acks="all",
            linger_ms=linger_ms,
            compression_type=compression,
            max_request_size=max_request_size,
            request_timeout_ms=config.request_timeout_ms,
            retry_backoff_ms=100,
            **_security_kwargs(config),
        )
        self._max_request_size = max_request_size
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        if self._stopped:
            raise ClientClosedError("a stopped producer cannot be restarted")
        if self._started:
            return
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            await self._producer.stop()

    async def flush(self) -> None:
        if self._started and not self._stopped:
            await self._producer.flush()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> Awaitable[RecordMetadata]:
        if self._stopped or not self._started:
            raise ClientClosedError("producer is not running")
        validate_topic_name(topic)
        try:
            future: asyncio.Future[RecordMetadata] = await self._producer.send(
                topic, value=value, key=key, partition=partition, headers=list(headers or ())
            )
        except MessageSizeTooLargeError as exc:
            size = len(value or b"") + len(key or b"")
            raise MessageTooLargeError(
                f"record for {topic} is about {size} bytes, above the limit of "
                f"{self._max_request_size} bytes; nothing was sent"
            ) from exc
        except KafkaInvalidTopicError as exc:
            raise ValueError(f"broker refused topic name {topic!r}") from exc
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return set(await self._producer.partitions_for(topic))


class KafkaAdminClient:
    """``AdminClient`` over ``AIOKafkaAdminClient``; creating an existing topic is fine."""

    def __init__(self, config: RedpandaSettings, *, client_id: str | None = None) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=config.bootstrap_list,
            client_id=client_id or f"{config.client_id}-admin",
            request_timeout_ms=config.request_timeout_ms,
            **_security_kwargs(config),
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
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                message = entry[2] if len(entry) > 2 else ""
                raise KafkaError(f"creating topic {name!r} failed with error {code}: {message}")
        await self._wait_visible([s.name for s in wanted])
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


# --------------------------------------------------------------------------- makers


def _embedded_broker(config: RedpandaSettings) -> InMemoryBroker:
    """The embedded broker ``config`` names, created with its partitions and retention."""
    from core.streaming.embedded import get_broker

    return get_broker(
        config.bootstrap_servers,
        default_partitions=config.topic_partitions,
        retention_records=config.embedded_retention_records,
    )


def create_consumer(
    config: RedpandaSettings,
    topics: Sequence[str],
    group_id: str,
    *,
    listener: RebalanceListener | None = None,
    auto_offset_reset: str = "earliest",
    max_poll_records: int = 500,
    client_id: str | None = None,
) -> ConsumerClient:
    """A consumer for ``topics`` in ``group_id``, on Kafka or the embedded broker."""
    if config.is_embedded:
        return _embedded_broker(config).consumer(
            topics,
            group_id,
            listener=listener,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=max_poll_records,
        )
    return KafkaConsumerClient(
        config,
        topics,
        group_id,
        listener=listener,
        auto_offset_reset=auto_offset_reset,
        max_poll_records=max_poll_records,
        client_id=client_id,
    )


def create_producer(
    config: RedpandaSettings, *, client_id: str | None = None, max_request_size: int = 1_048_576
) -> ProducerClient:
    """An idempotent, acks=all producer on Kafka or the embedded broker."""
    if config.is_embedded:
        return _embedded_broker(config).producer(max_request_size=max_request_size)
    return KafkaProducerClient(config, client_id=client_id, max_request_size=max_request_size)


def create_admin(config: RedpandaSettings) -> AdminClient:
    """An admin client on Kafka or the embedded broker."""
    if config.is_embedded:
        return _embedded_broker(config).admin()
    return KafkaAdminClient(config)


_fake_servers: dict[str, fakeredis.FakeServer] = {}


def create_redis(settings: RedisSettings) -> Redis:
    """A ``redis.asyncio.Redis``; for ``memory://`` URLs an in-process fakeredis one.

    Clients made from the same ``memory://`` URL share one fake server, as
    clients of one real Redis share its data.
    """
    url = settings.url.get_secret_value()
    if settings.is_embedded:
        server = _fake_servers.setdefault(url, fakeredis.FakeServer())
        client: Redis = fakeredis.FakeAsyncRedis(server=server)
        return client
    return redis_asyncio.Redis.from_url(
        url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        health_check_interval=15,
    )
