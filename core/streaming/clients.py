"""Client factories: the one place that picks the embedded default or real Kafka and Redis.

``create_consumer``, ``create_producer`` and ``create_admin`` return the embedded
broker's clients for ``memory://`` bootstrap servers and the aiokafka adapter's
otherwise; ``create_redis`` returns fakeredis for a ``memory://`` URL and
``redis.asyncio`` otherwise. Every layer above talks to the client surface of
``core.streaming.broker_api``, re-exported here with the error groups, so it runs
unchanged on either backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config.settings import RedisSettings, RedpandaSettings
from core.streaming.broker_api import (
    AdminClient,
    ConsumerClient,
    ConsumerOptions,
    ProducerClient,
    RebalanceListener,
    TransactionalProducerClient,
)
from core.streaming.embedded import (
    InMemoryAdmin,
    InMemoryBroker,
    InMemoryConsumer,
    InMemoryProducer,
    InMemoryTransactionalProducer,
    get_broker,
)
from core.streaming.errors import MessageTooLargeError
from core.streaming.kafka import (
    KAFKA_ERRORS,
    KAFKA_PRODUCER_STATE_ERRORS,
    KAFKA_TRANSIENT_ERRORS,
    KafkaAdminClient,
    KafkaConsumerClient,
    KafkaProducerClient,
    KafkaTransactionalProducerClient,
)
from core.streaming.redis_client import (
    REDIS_ERRORS,
    REDIS_TRANSIENT_ERRORS,
    Redis,
    cluster_redis,
    fake_redis,
    real_redis,
)

__all__ = [
    "BROKER_ERRORS",
    "PRODUCER_STATE_ERRORS",
    "REDIS_ERRORS",
    "TOO_LARGE_ERRORS",
    "TRANSIENT_CLIENT_ERRORS",
    "AdminClient",
    "ConsumerClient",
    "ConsumerOptions",
    "ProducerClient",
    "RebalanceListener",
    "Redis",
    "TransactionalProducerClient",
    "create_admin",
    "create_consumer",
    "create_producer",
    "create_redis",
    "create_transactional_producer",
]

#: Exceptions that mean "the broker or Redis is (perhaps briefly) unreachable".
TRANSIENT_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    *KAFKA_TRANSIENT_ERRORS,
    *REDIS_TRANSIENT_ERRORS,
    ConnectionError,
    TimeoutError,
)

#: Exceptions that mean "the broker refused this and will refuse it again".
BROKER_ERRORS: tuple[type[BaseException], ...] = KAFKA_ERRORS

#: Exceptions that mean "this record is too large for the broker" (at send or on the ack;
#: the adapters translate their own refusals to it).
TOO_LARGE_ERRORS: tuple[type[BaseException], ...] = (MessageTooLargeError,)

#: Errors after which an idempotent producer's sequence state is broken for good: every
#: later send to the partition would fail too, so the producer must be made anew.
PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = KAFKA_PRODUCER_STATE_ERRORS


def _embedded_broker(config: RedpandaSettings) -> InMemoryBroker:
    """The embedded broker ``config`` names, created with its partitions and retention."""
    return get_broker(
        config.bootstrap_servers,
        default_partitions=config.topic_partitions,
        retention_records=config.embedded_retention_records,
    )


def create_consumer(
    config: RedpandaSettings,
    topics: Sequence[str],
    group_id: str,
    options: ConsumerOptions | None = None,
    *,
    listener: RebalanceListener | None = None,
) -> ConsumerClient:
    """A consumer for ``topics`` in ``group_id``, on Kafka or the embedded broker.

    Group timeouts not set in ``options`` come from ``config``.
    """
    if config.is_embedded:
        return InMemoryConsumer(
            _embedded_broker(config),
            topics,
            group_id,
            (options or ConsumerOptions()).resolve(config),
            listener=listener,
        )
    return KafkaConsumerClient(config, topics, group_id, options, listener=listener)


def create_producer(
    config: RedpandaSettings, *, client_id: str | None = None, max_request_size: int = 1_048_576
) -> ProducerClient:
    """An idempotent, acks=all producer on Kafka or the embedded broker."""
    if config.is_embedded:
        return InMemoryProducer(
            _embedded_broker(config), max_request_size=max_request_size, client_id=client_id
        )
    return KafkaProducerClient(config, client_id=client_id, max_request_size=max_request_size)


def create_transactional_producer(
    config: RedpandaSettings,
    transactional_id: str,
    *,
    client_id: str | None = None,
    max_request_size: int = 1_048_576,
    transaction_timeout_ms: int = 60_000,
) -> TransactionalProducerClient:
    """A transactional producer with ``transactional_id``, on Kafka or the embedded broker.

    Starting it fences every older producer with the same id.
    """
    if config.is_embedded:
        return InMemoryTransactionalProducer(
            _embedded_broker(config),
            transactional_id,
            max_request_size=max_request_size,
            client_id=client_id,
            transaction_timeout_ms=transaction_timeout_ms,
        )
    return KafkaTransactionalProducerClient(
        config,
        transactional_id,
        client_id=client_id,
        max_request_size=max_request_size,
        transaction_timeout_ms=transaction_timeout_ms,
    )


def create_admin(config: RedpandaSettings) -> AdminClient:
    """An admin client on Kafka or the embedded broker."""
    if config.is_embedded:
        return InMemoryAdmin(_embedded_broker(config))
    return KafkaAdminClient(config)


def create_redis(settings: RedisSettings) -> Redis:
    """A ``redis.asyncio.Redis``; for ``memory://`` URLs an in-process fakeredis one.

    Clients made from the same ``memory://`` URL share one fake server, as
    clients of one real Redis share its data. For a Redis Cluster
    (``settings.is_cluster``) a cluster client: the dedup scripts touch the keys
    of one hash slot each, so they run there unchanged.
    """
    if settings.is_embedded:
        return fake_redis(settings.url.get_secret_value())
    if settings.is_cluster:
        return cluster_redis(settings)  # type: ignore[return-value]
    return real_redis(settings)
