"""Connection settings shared by every aiokafka client: address, TLS and SASL."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.helpers import create_ssl_context

from core.config.settings import RedpandaSettings
from core.streaming.types import TopicPartition


def connection_kwargs(config: RedpandaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the servers, security protocol, TLS and SASL."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_list,
        "security_protocol": config.security_protocol,
    }
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


def to_kafka(tp: TopicPartition) -> KafkaTopicPartition:
    """aiokafka's ``TopicPartition`` for ours."""
    return KafkaTopicPartition(tp.topic, tp.partition)
