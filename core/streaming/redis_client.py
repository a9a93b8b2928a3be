"""The Redis client: a real ``redis.asyncio.Redis``, or an in-process fakeredis one.

With the Kafka adapter (``core.streaming.kafka``) the only place that imports a
client library; ``core.streaming.clients.create_redis`` picks one of the two.
"""

from __future__ import annotations

import fakeredis
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config.settings import RedisSettings

Redis = redis_asyncio.Redis

#: Redis errors that mean "Redis is (perhaps briefly) unreachable".
REDIS_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
)

#: Every error the Redis client raises (server replies such as OOM or READONLY included;
#: the cluster client's own ones too, such as no node serving a slot yet).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException)

#: Redis refusing these credentials or this user: retrying cannot help.
REDIS_AUTH_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)

_fake_servers: dict[str, fakeredis.FakeServer] = {}


def fake_redis(url: str) -> Redis:
    """A fakeredis client (with Lua); clients of one ``memory://`` URL share one server.

    Clients made from the same URL see the same data, as clients of one real Redis do.
    """
    server = _fake_servers.setdefault(url, fakeredis.FakeServer())
    client: Redis = fakeredis.FakeAsyncRedis(server=server)
    return client


def real_redis(settings: RedisSettings) -> Redis:
    """A ``redis.asyncio.Redis`` for ``settings.url`` with its timeouts and TLS files."""
    return redis_asyncio.Redis.from_url(
        settings.client_url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        health_check_interval=15,
        **settings.tls_kwargs(),
    )


def cluster_redis(settings: RedisSettings) -> RedisCluster:
    """A ``RedisCluster`` client for the settings' seed URL, timeouts and TLS files.

    It answers the commands the layers above use (``ping``, scripts whose keys
    share a hash slot, ``aclose``), routing each by slot and following MOVED and
    ASK; after a master fails over it refreshes its slot map and retries.
    """
    client: RedisCluster = RedisCluster.from_url(
        settings.client_url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        **settings.tls_kwargs(),
    )
    return client
