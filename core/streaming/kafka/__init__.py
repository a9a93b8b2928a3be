"""The aiokafka adapter: ``ConsumerClient``, ``ProducerClient`` and ``AdminClient`` on Kafka.

With ``core.streaming.redis_client`` it is the only place that imports a client
library; it depends on the client surface (``core.streaming.broker_api``) and the
shared types and errors, not on the embedded broker.
"""

from core.streaming.kafka.admin import KafkaAdminClient
from core.streaming.kafka.consumer import KafkaConsumerClient
from core.streaming.kafka.errors import (
    KAFKA_ERRORS,
    KAFKA_PRODUCER_STATE_ERRORS,
    KAFKA_TRANSIENT_ERRORS,
)
from core.streaming.kafka.producer import KafkaProducerClient
from core.streaming.kafka.transactional import KafkaTransactionalProducerClient

__all__ = [
    "KAFKA_ERRORS",
    "KAFKA_PRODUCER_STATE_ERRORS",
    "KAFKA_TRANSIENT_ERRORS",
    "KafkaAdminClient",
    "KafkaConsumerClient",
    "KafkaProducerClient",
    "KafkaTransactionalProducerClient",
]
