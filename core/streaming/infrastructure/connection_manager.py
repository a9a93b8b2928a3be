"""Owns the shared connections of a service: the broker (admin) and Redis.

At start it waits for each with bounded retries and backoff (tenacity), and
fails with a message that names what and where ("Kafka not reachable at
127.0.0.1:9092 after 30 s (ConnectionRefusedError: ...)") instead of hanging.
Only what time can fix is retried: a wrong password, a certificate that does
not verify, a missing file or a plaintext/TLS mismatch ends the start at once
(:class:`BrokerAccessError`, :class:`RedisAccessError`) with the cause named and
no secret in it. It also creates topics idempotently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from core.config.settings import Settings
from core.streaming.clients import (
    AdminClient,
    Redis,
    create_admin,
    create_redis,
)
from core.streaming.connection_diagnosis import (
    Diagnosis,
    check_files,
    diagnose_kafka,
    diagnose_redis,
)
from core.streaming.errors import (
    BrokerAccessError,
    BrokerUnavailableError,
    RedisAccessError,
    RedisUnavailableError,
)
from core.streaming.logging_setup import register_secret
from core.streaming.types import TopicSpec

logger = logging.getLogger(__name__)

#: How long a readiness check waits for the broker or Redis to answer.
HEALTH_TIMEOUT_S = 2.0
#: Longest single connection attempt at start: a server that accepts but never
#: answers (a TLS client on a plaintext Redis port, a stopped broker) is then
#: diagnosed and retried instead of using up the whole start budget in one go.
ATTEMPT_TIMEOUT_S = 3.0
#: Time a failed attempt may spend finding out why (the probes of connection_diagnosis).
_DIAGNOSIS_S = 4.0


class _Permanent(Exception):
    """An attempt failed for a reason retrying cannot fix."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.reason)
        self.diagnosis = diagnosis


async def retry_until(
    attempt: Callable[[], Awaitable[None]],
    timeout_s: float,
    *,
    initial_backoff_s: float = 0.2,
    max_backoff_s: float = 2.0,
    attempt_timeout_s: float | None = None,
) -> None:
    """Call ``attempt`` until it succeeds or ``timeout_s`` passed; re-raise the last error.

    Each attempt gets the time that is left (at most ``attempt_timeout_s``). An
    attempt that raises :class:`_Permanent` is not retried.
    """
    deadline = time.monotonic() + timeout_s
    retrying = AsyncRetrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_exponential(multiplier=initial_backoff_s, max=max_backoff_s)
        + wait_random(0, initial_backoff_s / 2),
        retry=retry_if_exception(lambda exc: not isinstance(exc, _Permanent)),
        reraise=True,
    )
    async for try_ in retrying:
        with try_:
            left = max(0.1, deadline - time.monotonic())
            await asyncio.wait_for(attempt(), min(left, attempt_timeout_s or left))


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
        password = settings.redpanda.sasl_password
        register_secret(password.get_secret_value() if password else None, settings.redis.password)
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
        if not cfg.is_embedded:
            files = {
                name: path
                for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                if (path := getattr(cfg, name)) and cfg.security_protocol in ("SSL", "SASL_SSL")
            }
            bad = check_files(files, "TRADESTREAM_REDPANDA__")
            if bad is not None:
                raise BrokerAccessError(f"Kafka at {cfg.bootstrap_servers}: {bad.reason}")
        last: list[Diagnosis] = []

        async def attempt() -> None:
            admin = create_admin(cfg)
            failure: Exception | None = None
            try:
                await asyncio.wait_for(admin.start(), ATTEMPT_TIMEOUT_S)
                await asyncio.wait_for(admin.list_topics(), ATTEMPT_TIMEOUT_S)
            except Exception as exc:
                failure = exc
            except BaseException:
                await admin.close()
                raise
            if failure is None:
                self._admin = admin
                return
            await admin.close()
            if cfg.is_embedded:
                raise failure
            # Diagnosed outside the except block, so the probe's errors do not
            # chain onto this one.
            await self._diagnosed(await diagnose_kafka(cfg, failure), failure, last)

        try:
            await retry_until(attempt, timeout, attempt_timeout_s=ATTEMPT_TIMEOUT_S + _DIAGNOSIS_S)
        except _Permanent as exc:
            raise BrokerAccessError(
                f"Kafka at {cfg.bootstrap_servers} refused this client: {exc.diagnosis.reason}"
            ) from None
        except Exception as exc:
            why = last[0].reason if last else f"{type(exc).__name__}"
            raise BrokerUnavailableError(
                f"Kafka not reachable at {cfg.bootstrap_servers} after {timeout:g} s ({why})"
            ) from exc

    async def _connect_redis(self) -> None:
        cfg = self.settings.redis
        if cfg.tls_verification_off:
            logger.warning(
                "Redis at %s: TLS certificate verification is off; the connection is "
                "encrypted but the server is not authenticated",
                cfg.safe_address,
            )
        bad = check_files(cfg.tls_files, "TRADESTREAM_REDIS__")
        if bad is not None:
            raise RedisAccessError(f"Redis at {cfg.safe_address}: {bad.reason}")
        client = self.redis
        last: list[Diagnosis] = []

        async def attempt() -> None:
            failure: Exception | None = None
            try:
                await asyncio.wait_for(client.ping(), ATTEMPT_TIMEOUT_S)
            except Exception as exc:
                failure = exc
            if failure is not None:
                await self._diagnosed(await diagnose_redis(cfg, failure), failure, last)

        try:
            await retry_until(
                attempt, cfg.connect_timeout_s, attempt_timeout_s=ATTEMPT_TIMEOUT_S + _DIAGNOSIS_S
            )
        except _Permanent as exc:
            raise RedisAccessError(
                f"Redis at {cfg.safe_address} refused this client: {exc.diagnosis.reason}"
            ) from None
        except Exception as exc:
            why = last[0].reason if last else f"{type(exc).__name__}"
            raise RedisUnavailableError(
                f"Redis not reachable at {cfg.safe_address} after {cfg.connect_timeout_s:g} s "
                f"({why})"
            ) from exc

    @staticmethod
    async def _diagnosed(diagnosis: Diagnosis, failure: Exception, last: list[Diagnosis]) -> None:
        """Raise for a failed attempt: :class:`_Permanent` to stop, ``failure`` to retry."""
        last[:] = [diagnosis]
        if diagnosis.permanent:
            raise _Permanent(diagnosis) from failure
        raise failure

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
        """Whether the broker and Redis answer now, each within ``HEALTH_TIMEOUT_S``.

        Errors are reported by type only: the report is served over HTTP.
        """
        if self._admin is None:
            return {"running": self._running, "kafka": "error: not started", "healthy": False}
        checks: dict[str, Awaitable[Any]] = {"kafka": self._admin.list_topics()}
        if self.use_redis:
            checks["redis"] = self.redis.ping()
        results = await asyncio.gather(
            *(asyncio.wait_for(c, HEALTH_TIMEOUT_S) for c in checks.values()),
            return_exceptions=True,
        )
        report: dict[str, Any] = {"running": self._running}
        for name, result in zip(checks, results, strict=True):
            if isinstance(result, TimeoutError):
                report[name] = f"error: no answer within {HEALTH_TIMEOUT_S:g} s"
            elif isinstance(result, BaseException):
                report[name] = f"error: {type(result).__name__}"
            else:
                report[name] = "ok"
        report["healthy"] = report["kafka"] == "ok" and report.get("redis", "ok") == "ok"
        return report
