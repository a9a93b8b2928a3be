"""Effectively-once side effects: claim an event id in Redis before handling it.

An event id moves through three states in Redis, under the key
``dedup:{service}:{consumer_group}:{event_id}``:

- absent: nobody has handled it (or its record expired);
- ``processing:<owner>``: a worker claimed it and is running the handler; the
  claim expires after ``processing_ttl_ms`` so a crashed worker's claim frees
  itself;
- ``done``: handled; kept for ``ttl_seconds`` so redeliveries are skipped.

A claim is one atomic round trip (a Lua script doing ``SET NX PX`` and, when the
key exists, reading it), so two workers racing on one id never both run it, and
a batch of ids is claimed with one script call. The batch scripts receive the
ids packed in one argument and build the keys themselves, which halves their
cost but means they run on a single Redis node, not on a Redis Cluster.
Scoping keys by consumer group keeps two flows of one service from suppressing
each other's events.

A bounded, true-LRU local cache remembers ids known to be done; each entry
expires no later than the Redis record it mirrors, measured with a monotonic
clock, so the cache never answers "duplicate" for an id Redis has forgotten.

When Redis cannot be reached, ``failure_policy`` decides: ``fail_open`` runs the
handler without dedup (``ClaimResult.BYPASSED``, counted and logged);
``fail_closed`` raises :class:`DedupUnavailableError` so the caller pauses and
retries. Either way no message is dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Literal

from core.streaming.clients import TRANSIENT_CLIENT_ERRORS, Redis
from core.streaming.errors import RetryableError
from core.streaming.reliability.metrics_collector import DEFAULT_GROUP, MetricsCollector

logger = logging.getLogger(__name__)

FailurePolicy = Literal["fail_open", "fail_closed"]

DONE = "done"
PROCESSING_PREFIX = "processing:"
KEY_PREFIX = "dedup"
#: Seconds between two "Redis unreachable" warnings of one manager.
WARN_INTERVAL_S = 10.0

# KEYS: dedup keys. ARGV[1]: our claim value, ARGV[2]: claim lifetime in ms.
# Per key: 1 when we claimed it, else {current value, remaining ms}.
_CLAIM_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    out[i] = {redis.call('GET', key), redis.call('PTTL', key)}
  end
end
return out
"""

# The packed forms take the ids as one newline-separated argument and build the keys
# from a prefix: on a batch they cost the client and the server about half as much as
# one argument per key. ARGV[1]: claim value, ARGV[2]: claim ms, ARGV[3]: key prefix,
# ARGV[4]: ids. Returns {one flag per id: C claimed, D done, P in progress; the
# remaining ms of each D, in order}.
_PACKED_CLAIM_SCRIPT = """
local prefix, flags, ttls = ARGV[3], {}, {}
for id in string.gmatch(ARGV[4], '[^\\n]+') do
  local key = prefix .. id
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    flags[#flags + 1] = 'C'
  elseif redis.call('GET', key) == 'done' then
    flags[#flags + 1] = 'D'
    ttls[#ttls + 1] = redis.call('PTTL', key)
  else
    flags[#flags + 1] = 'P'
  end
end
return {table.concat(flags), ttls}
"""

# ARGV[1]: record lifetime in ms, ARGV[2]: key prefix, ARGV[3]: newline-separated ids.
_PACKED_DONE_SCRIPT = """
local n = 0
for id in string.gmatch(ARGV[3], '[^\\n]+') do
  redis.call('SET', ARGV[2] .. id, 'done', 'PX', ARGV[1])
  n = n + 1
end
return n
"""

# KEYS: dedup keys. ARGV[1]: record lifetime in ms. Marks every key done.
_DONE_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, 'done', 'PX', ARGV[1])
end
return #KEYS
"""

# KEYS: dedup keys. ARGV[1]: our claim value. Deletes only keys still holding it.
_RELEASE_SCRIPT = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""

# KEYS[1]: one dedup key. ARGV[1]: our claim value, ARGV[2]: claim ms.
# Extends the claim if it is still ours: 1, else 0.
_REFRESH_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1]: one dedup key. Returns {value or false, remaining ms}.
_PEEK_SCRIPT = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""


class ClaimResult(StrEnum):
    """What a claim found, and so what the caller does with the message."""

    CLAIMED = "claimed"
    """We own the id now: run the handler, then ``mark_done`` or ``release``."""
    DUPLICATE = "duplicate"
    """Already handled: skip the message (it is final, commit it)."""
    IN_PROGRESS = "in_progress"
    """Another worker holds an unexpired claim: do not run it now; retry later."""
    BYPASSED = "bypassed"
    """Redis is unreachable and the policy is ``fail_open``: run without dedup."""


class DedupUnavailableError(RetryableError):
    """Redis is unreachable and the policy is ``fail_closed``: pause and retry."""


class DeduplicationManager:
    """Claims, completes and releases event ids in Redis for one service and group.

    ``ttl_seconds`` is how long a ``done`` record (and a local cache entry) lives;
    ``processing_ttl_ms`` how long an unfinished claim lives; ``clock`` is the
    monotonic clock that ages the local cache.
    """

    def __init__(
        self,
        redis_client: Redis,
        service_name: str,
        ttl_seconds: int = 3600,
        *,
        consumer_group: str | None = None,
        processing_ttl_ms: int = 60_000,
        local_cache_size: int = 10_000,
        failure_policy: FailurePolicy = "fail_open",
        clock: Callable[[], float] = time.monotonic,
        metrics: MetricsCollector | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if processing_ttl_ms <= 0:
            raise ValueError("processing_ttl_ms must be positive")
        if local_cache_size < 0:
            raise ValueError("local_cache_size must not be negative")
        if failure_policy not in ("fail_open", "fail_closed"):
            raise ValueError(f"unknown failure_policy {failure_policy!r}")
        self.redis_client = redis_client
        self.service_name = service_name
        self.consumer_group = consumer_group or DEFAULT_GROUP
        self.ttl_seconds = ttl_seconds
        self.processing_ttl_ms = processing_ttl_ms
        self.local_cache_size = local_cache_size
        self.failure_policy: FailurePolicy = failure_policy
        self.metrics = metrics
        self._clock = clock
        self._key_prefix = f"{KEY_PREFIX}:{service_name}:{self.consumer_group}:"
        self._claim_value = f"{PROCESSING_PREFIX}{uuid.uuid4().hex}"
        self._local: OrderedDict[str, float] = OrderedDict()
        self._claim_script = redis_client.register_script(_CLAIM_SCRIPT)
        self._release_script = redis_client.register_script(_RELEASE_SCRIPT)
        self._done_script = redis_client.register_script(_DONE_SCRIPT)
        self._packed_claim_script = redis_client.register_script(_PACKED_CLAIM_SCRIPT)
        self._packed_done_script = redis_client.register_script(_PACKED_DONE_SCRIPT)
        self._peek_script = redis_client.register_script(_PEEK_SCRIPT)
        self._refresh_script = redis_client.register_script(_REFRESH_SCRIPT)
        self._last_warning: float | None = None
        self._suppressed_warnings = 0
        self.unavailable_count = 0

    # ------------------------------------------------------------------ keys, cache

    def key_for(self, event_id: str) -> str:
        """The Redis key of ``event_id`` for this service and consumer group."""
        return self._key_prefix + event_id

    @property
    def owner_value(self) -> str:
        """The value this manager writes while it holds a claim."""
        return self._claim_value

    def _cache_hit(self, event_id: str) -> bool:
        expires = self._local.get(event_id)
        if expires is None:
            return False
        if self._clock() >= expires:
            del self._local[event_id]
            return False
        self._local.move_to_end(event_id)
        return True

    def _cache_add(self, event_id: str, expires_at: float) -> None:
        if self.local_cache_size == 0:
            return
        self._local[event_id] = expires_at
        self._local.move_to_end(event_id)
        while len(self._local) > self.local_cache_size:
            self._local.popitem(last=False)

    def cached(self, event_id: str) -> bool:
        """True when the local cache knows ``event_id`` is done (no round trip)."""
        return self._cache_hit(event_id)

    @property
    def local_cache_len(self) -> int:
        """Entries in the local cache, expired ones included until looked up."""
        return len(self._local)

    # ------------------------------------------------------------------ unavailability

    def _unavailable(
        self, operation: str, exc: BaseException, n: int, *, may_raise: bool = True
    ) -> None:
        """Count and log (rate-limited) a failed round trip; raise under fail_closed."""
        self.unavailable_count += n
        if self.metrics is not None:
            self.metrics.record_dedup_unavailable(n, consumer_group=self.consumer_group)
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_INTERVAL_S:
            logger.warning(
                "dedup store unreachable during %s (%s: %s); policy %s; "
                "%d similar warnings suppressed",
                operation,
                type(exc).__name__,
                exc,
                self.failure_policy,
                self._suppressed_warnings,
            )
            self._last_warning = now
            self._suppressed_warnings = 0
        else:
            self._suppressed_warnings += 1
        if may_raise and self.failure_policy == "fail_closed":
            raise DedupUnavailableError(
                f"dedup store unreachable during {operation}: {type(exc).__name__}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ claims

    def _interpret(self, event_id: str, reply: Any, sent_at: float) -> ClaimResult:
        """One key's script reply as a result; a ``done`` one is cached until it expires."""
        if reply == 1:
            return ClaimResult.CLAIMED
        value, pttl = reply
        text = value.decode() if isinstance(value, bytes) else value
        if text == DONE:
            if isinstance(pttl, int) and pttl > 0:
                self._cache_add(event_id, sent_at + min(pttl / 1000, self.ttl_seconds))
            return ClaimResult.DUPLICATE
        return ClaimResult.IN_PROGRESS

    async def claim(self, event_id: str) -> ClaimResult:
        """Claim ``event_id`` atomically in one round trip (none on a local cache hit)."""
        if self._cache_hit(event_id):
            return ClaimResult.DUPLICATE
        sent_at = self._clock()
        try:
            replies = await self._claim_script(
                keys=[self.key_for(event_id)],
                args=[self._claim_value, self.processing_ttl_ms],
            )
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("claim", exc, 1)
            return ClaimResult.BYPASSED
        return self._interpret(event_id, replies[0], sent_at)

    async def claim_many(self, event_ids: Iterable[str]) -> dict[str, ClaimResult]:
        """Claim a batch of ids in one round trip; one entry per distinct id.

        An id repeated within the batch is claimed once: the caller should treat
        its later occurrences as duplicates of the first.
        """
        results: dict[str, ClaimResult] = {}
        pending: list[str] = []
        for event_id in event_ids:
            if event_id in results:
                continue
            if self._cache_hit(event_id):
                results[event_id] = ClaimResult.DUPLICATE
            else:
                results[event_id] = ClaimResult.CLAIMED
                pending.append(event_id)
        if not pending:
            return results
        sent_at = self._clock()
        try:
            if _packable(pending):
                await self._claim_packed(pending, results, sent_at)
                return results
            replies = await self._claim_script(
                keys=[self.key_for(e) for e in pending],
                args=[self._claim_value, self.processing_ttl_ms],
            )
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("claim_many", exc, len(pending))
            for event_id in pending:
                results[event_id] = ClaimResult.BYPASSED
            return results
        for event_id, reply in zip(pending, replies, strict=True):
            results[event_id] = self._interpret(event_id, reply, sent_at)
        return results

    async def _claim_packed(
        self, pending: list[str], results: dict[str, ClaimResult], sent_at: float
    ) -> None:
        flags, ttls = await self._packed_claim_script(
            keys=[],
            args=[self._claim_value, self.processing_ttl_ms, self._key_prefix, "\n".join(pending)],
        )
        remaining = iter(ttls)
        for event_id, flag in zip(
            pending, flags.decode() if isinstance(flags, bytes) else flags, strict=True
        ):
            if flag == "C":
                results[event_id] = ClaimResult.CLAIMED
            elif flag == "D":
                pttl = next(remaining)
                if isinstance(pttl, int) and pttl > 0:
                    self._cache_add(event_id, sent_at + min(pttl / 1000, self.ttl_seconds))
                results[event_id] = ClaimResult.DUPLICATE
            else:
                results[event_id] = ClaimResult.IN_PROGRESS

    # ------------------------------------------------------------------ completion

    async def mark_done(self, event_id: str) -> None:
        """Record ``event_id`` as handled for ``ttl_seconds`` and cache it locally."""
        await self.mark_done_many((event_id,))

    async def mark_done_many(self, event_ids: Sequence[str]) -> None:
        """Record a batch of ids as handled with one script call (one round trip).

        When Redis is unreachable the ids are still remembered in the local cache;
        then nothing else happens under ``fail_open``, and ``fail_closed`` raises
        :class:`DedupUnavailableError` so the caller retries before committing.
        """
        if not event_ids:
            return
        sent_at = self._clock()
        ttl_ms = self.ttl_seconds * 1000
        try:
            if _packable(event_ids):
                await self._packed_done_script(
                    keys=[], args=[ttl_ms, self._key_prefix, "\n".join(event_ids)]
                )
            else:
                await self._done_script(keys=[self.key_for(e) for e in event_ids], args=[ttl_ms])
        except TRANSIENT_CLIENT_ERRORS as exc:
            # Cached first: under fail_open this worker still skips its own redeliveries.
            for event_id in event_ids:
                self._cache_add(event_id, sent_at + self.ttl_seconds)
            self._unavailable("mark_done", exc, len(event_ids))
            return
        for event_id in event_ids:
            self._cache_add(event_id, sent_at + self.ttl_seconds)

    async def refresh(self, event_id: str) -> bool:
        """Renew our claim on ``event_id`` for another ``processing_ttl_ms``.

        False when the claim is no longer ours (it expired, and perhaps another
        worker holds it now): the caller must claim again before running the
        handler. Under ``fail_open`` an unreachable Redis counts as renewed.
        """
        try:
            renewed = await self._refresh_script(
                keys=[self.key_for(event_id)], args=[self._claim_value, self.processing_ttl_ms]
            )
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("refresh", exc, 1)
            return True
        return bool(renewed)

    async def release(self, event_id: str) -> None:
        """Drop our unfinished claim on ``event_id`` so a retry or redelivery can run it."""
        await self.release_many((event_id,))

    async def release_many(self, event_ids: Sequence[str]) -> None:
        """Drop our unfinished claims on a batch of ids in one round trip.

        Only keys still holding this manager's claim are deleted: never a ``done``
        record, never another worker's claim. When Redis is unreachable this logs
        and returns under either policy: the claim expires by itself after
        ``processing_ttl_ms``.
        """
        if not event_ids:
            return
        try:
            await self._release_script(
                keys=[self.key_for(e) for e in event_ids], args=[self._claim_value]
            )
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("release", exc, len(event_ids), may_raise=False)

    # ------------------------------------------------------------------ plan API

    async def is_duplicate(self, event_id: str) -> bool:
        """True when ``event_id`` is recorded as handled; claims nothing.

        When Redis is unreachable: ``False`` under ``fail_open`` (handle it),
        :class:`DedupUnavailableError` under ``fail_closed``.
        """
        if self._cache_hit(event_id):
            return True
        sent_at = self._clock()
        try:
            value, pttl = await self._peek_script(keys=[self.key_for(event_id)], args=[])
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("is_duplicate", exc, 1)
            return False
        if value in (DONE, DONE.encode()):
            if isinstance(pttl, int) and pttl > 0:
                self._cache_add(event_id, sent_at + min(pttl / 1000, self.ttl_seconds))
            return True
        return False

    async def mark_processed(self, event_id: str) -> None:
        """Record ``event_id`` as handled (the plan's name for :meth:`mark_done`)."""
        await self.mark_done(event_id)

    def health(self) -> dict[str, Any]:
        """Counters for a health report."""
        return {
            "failure_policy": self.failure_policy,
            "local_cache": len(self._local),
            "unavailable": self.unavailable_count,
        }


def _packable(event_ids: Sequence[str]) -> bool:
    """True when the ids can travel newline-separated (none empty or with a newline)."""
    return all(event_id and "\n" not in event_id for event_id in event_ids)
