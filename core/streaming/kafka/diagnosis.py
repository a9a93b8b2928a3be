"""Probes that find why a Kafka connection failed (aiokafka only logs the cause).

``core.streaming.connection_diagnosis`` uses these to tell a wrong password or
certificate from a broker that is merely down.
"""

from __future__ import annotations

import asyncio

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn

from core.config.settings import RedpandaSettings
from core.streaming.kafka.connection import connection_kwargs

#: The broker refusing these credentials or this SASL mechanism: retrying cannot help.
KAFKA_AUTH_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)

#: The broker refusing this user an operation the client needs at start.
KAFKA_DENIED_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
)


async def connect_error(
    host: str, port: int, config: RedpandaSettings | None, timeout_s: float = 3.0
) -> Exception | None:
    """The error of one connection to ``host:port`` (TLS and SASL as in ``config``).

    ``None`` when it connects (and authenticates). ``config`` ``None`` probes in
    plaintext without SASL. A missing TLS file raises at once.
    """
    kwargs = {"security_protocol": "PLAINTEXT"} if config is None else connection_kwargs(config)
    kwargs.pop("bootstrap_servers", None)
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **kwargs),
            timeout_s + 1,
        )
    except Exception as exc:
        return exc
    conn.close()
    return None
