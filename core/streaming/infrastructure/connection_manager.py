"""Owns the shared connections of a service: the broker (admin) and Redis.

At start it waits for each with bounded retries and backoff, and fails with a
message that names what and where ("Kafka not reachable at 127.0.0.1:9092 after
30 s") instead of hanging. It also creates topics idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from core.config.settings import Settings
from core.streaming.clients import (
    AdminClient,
    Redis,
    create_admin,
    create_redis,
)
from core.streaming.errors import BrokerUnavailableError, RedisUnavailableError
from core.streaming.types import TopicSpec

logger = logging.getLogger(__name__)


async def retry_until(
    attempt: Callable[[], Awaitable[None]],
    timeout_s: float,
    *,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 2.0,
) -> None:
    """Call ``attempt`` until it succeeds or ``timeout_s`` passed; re-raise the last error."""
    deadline = time.monotonic() + timeout_s
    backoff = initial_backoff_s
    while True:
        try:
            await asyncio.wait_for(attempt(), max(0.1, deadline - time.monotonic()))
            return
        except Exception:
            if time.monotonic() + backoff >= deadline:
                raise
        await asyncio.sleep(backoff)
        backoff = min(max_backoff_s, backoff * 2)


class ConnectionManager:
    """Shared Kafka admin and Redis clients with a start/stop/health lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        use_redis: bool = True,
        redis_client: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.use_redis = use_redis or redis_client is not None
        self._redis: Redis | None = redis_client
        self._owns_redis = redis_client is None
        self._admin: AdminClient | None = None
        self._running = False

    @property
    def admin(self) -> AdminClient:
        """The started admin client."""
        if self._admin is None:
            raise RuntimeError("connection manager is not started")
        return self._admin

    @property
    def redis(self) -> Redis:
        """The Redis client (created on first use)."""
        if self._redis is None:
            self._redis = create_redis(self.settings.redis)
        return self._redis

    async def start(self) -> None:
        """Connect to the broker and Redis, or raise a clear error. Idempotent."""
        if self._running:
            return
        await self._connect_broker()
        if self.use_redis:
            try:
                await self._connect_redis()
            except BaseException:
                await self._close_admin()
                raise
        self._running = True

    async def _connect_broker(self) -> None:
        cfg = self.settings.redpanda
        timeout = cfg.connect_timeout_s

        async def attempt() -> None:
            admin = create_admin(cfg)
            try:
                await admin.start()
                await admin.list_topics()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin

        try:
            await retry_until(attempt, timeout)
        except Exception as exc:
            raise BrokerUnavailableError(
                f"Kafka not reachable at {cfg.bootstrap_servers} after {timeout:g} s "
                f"({type(exc).__name__})"
            ) from exc

    async def _connect_redis(self) -> None:
        cfg = self.settings.redis
        client = self.redis

        async def attempt() -> None:
            await client.ping()

        try:
            await retry_until(attempt, cfg.connect_timeout_s)
        except Exception as exc:
            raise RedisUnavailableError(
                f"Redis not reachable at {cfg.safe_address} after {cfg.connect_timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from exc

    async def ensure_topics(self, names: Iterable[str], partitions: int | None = None) -> list[str]:
        """Create the topics that do not exist yet; returns the created names."""
        cfg = self.settings.redpanda
        specs = [
            TopicSpec(n, partitions or cfg.topic_partitions, cfg.topic_replication_factor)
            for n in dict.fromkeys(names)
        ]
        created = await self.admin.create_topics(specs)
        if created:
            logger.info("created topics %s", created)
        return created

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def stop(self) -> None:
        """Close every connection this manager opened. Idempotent."""
        self._running = False
        await self._close_admin()
        if self._redis is not None and self._owns_redis:
            redis, self._redis = self._redis, None
            await redis.aclose()

    async def health(self) -> dict[str, Any]:
        """Whether the broker and Redis answer right now."""
        report: dict[str, Any] = {"running": self._running}
        try:
            await asyncio.wait_for(self.admin.list_topics(), 5)
            report["kafka"] = "ok"
        except Exception as exc:
            report["kafka"] = f"error: {type(exc).__name__}"
        if self.use_redis:
            try:
                await asyncio.wait_for(self.redis.ping(), 5)
                report["redis"] = "ok"
            except Exception as exc:
                report["redis"] = f"error: {type(exc).__name__}"
        report["healthy"] = report["kafka"] == "ok" and report.get("redis", "ok") == "ok"
        return report
