"""Effectively-once side effects: claim an event id in Redis before handling it.

An event id moves through three states in Redis, under the key
``dedup:{service}:{consumer_group}:{event_id}``:

- absent: nobody has handled it (or its record expired);
- a claim ``p|<member>|<topic:partition>|<generation>|<n>``: a worker runs the
  handler. Every claim has its own token, so two lanes of one process are as
  distinct as two processes. It expires after ``processing_ttl_ms`` unless its
  holder renews it (the flow renews held claims while their handlers run);
- ``done``: handled; kept for ``ttl_seconds`` so redeliveries are skipped.

A batch of one partition's ids is claimed with one script call (``SET NX PX``
per id, atomically). A claim left on that partition by a member of an older
group generation is *taken over*: the partition's new owner replaces it at
once instead of waiting for it to expire, since Kafka has handed the partition
over and the previous owner gave up or died. A live member's claim on another
partition is waited for.

Identity: ids longer than ``MAX_ID_LENGTH`` or holding separators are replaced
in keys by their SHA-256, so a hostile id never becomes a huge Redis key.

A bounded, true-LRU local cache remembers ids known to be done; each entry
expires no later than the Redis record it mirrors (monotonic clock).

When Redis is unreachable or answers with an error (READONLY, OOM, LOADING),
``failure_policy`` decides: ``fail_open`` runs the handler without dedup
(``ClaimResult.BYPASSED``, counted and logged); ``fail_closed`` raises
:class:`DedupUnavailableError` so the caller pauses and retries. Either way no
message is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Literal

from core.streaming.clients import REDIS_ERRORS, TRANSIENT_CLIENT_ERRORS, Redis
from core.streaming.errors import RetryableError
from core.streaming.reliability.sensors import Sensor

logger = logging.getLogger(__name__)

FailurePolicy = Literal["fail_open", "fail_closed"]

DONE = "done"
CLAIM_PREFIX = "p|"
KEY_PREFIX = "dedup"
DEFAULT_GROUP = "default"
#: Ids longer than this are hashed in keys.
MAX_ID_LENGTH = 200
#: Seconds between two "Redis unreachable" warnings of one manager.
WARN_INTERVAL_S = 10.0

_STORE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_CLIENT_ERRORS, *REDIS_ERRORS)

# ARGV: 1 claim ms, 2 key prefix, 3 token base "p|member|tp|gen|", 4 first token number,
# 5 member, 6 topic:partition, 7 generation, 8 newline-separated ids.
# Returns {flags, remaining ms of each D}: C claimed, T taken over from an older
# generation's owner of this partition, D done, H held by this member, P held elsewhere.
_CLAIM_SCRIPT = """
local prefix, base, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local member, tp, gen = ARGV[5], ARGV[6], tonumber(ARGV[7])
local flags, ttls = {}, {}
for id in string.gmatch(ARGV[8], '[^\\n]+') do
  local key, token = prefix .. id, base .. n
  n = n + 1
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[1]) then
    flags[#flags + 1] = 'C'
  else
    local cur = redis.call('GET', key)
    if cur == 'done' then
      flags[#flags + 1] = 'D'
      ttls[#ttls + 1] = redis.call('PTTL', key)
    else
      local m, ctp, cgen = string.match(cur or '', '^p|([^|]*)|([^|]*)|([^|]*)|')
      if m == member then
        flags[#flags + 1] = 'H'
      elseif m and ctp == tp and gen >= 0 and (tonumber(cgen) or 0) < gen then
        redis.call('SET', key, token, 'PX', ARGV[1])
        flags[#flags + 1] = 'T'
      else
        flags[#flags + 1] = 'P'
      end
    end
  end
end
return {table.concat(flags), ttls}
"""

# ARGV: 1 record lifetime ms, 2 key prefix, 3 newline-separated ids. Marks each done.
_DONE_SCRIPT = """
local n = 0
for id in string.gmatch(ARGV[3], '[^\\n]+') do
  redis.call('SET', ARGV[2] .. id, 'done', 'PX', ARGV[1])
  n = n + 1
end
return n
"""

# ARGV: 1 claim ms (0: delete instead), 2 key prefix, 3 lines "id<TAB>token".
# Renews (or deletes) each claim still holding its token; returns one 1/0 flag per line.
_HELD_SCRIPT = """
local flags = {}
for id, token in string.gmatch(ARGV[3], '([^\\t\\n]+)\\t([^\\n]+)') do
  local key = ARGV[2] .. id
  if redis.call('GET', key) == token then
    if ARGV[1] == '0' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[1]) end
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
return table.concat(flags)
"""

# KEYS[1]: one dedup key. Returns {value or false, remaining ms}.
_PEEK_SCRIPT = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"


class ClaimResult(StrEnum):
    """What a claim found, and so what the caller does with the message."""

    CLAIMED = "claimed"
    """We own the id now: run the handler, then mark it done or release it."""
    DUPLICATE = "duplicate"
    """Already handled: skip the message (it is final, commit it)."""
    IN_PROGRESS = "in_progress"
    """Another member holds an unexpired claim: do not run it now; retry later."""
    HELD_HERE = "held_here"
    """Another copy in this member holds the claim: wait for it to finish."""
    BYPASSED = "bypassed"
    """Redis is unreachable and the policy is ``fail_open``: run without dedup."""


_FLAGS = {
    "C": ClaimResult.CLAIMED,
    "T": ClaimResult.CLAIMED,
    "D": ClaimResult.DUPLICATE,
    "H": ClaimResult.HELD_HERE,
    "P": ClaimResult.IN_PROGRESS,
}


class DedupUnavailableError(RetryableError):
    """Redis is unreachable (or erroring) and the policy is ``fail_closed``."""


def key_id(event_id: str) -> str:
    """The form of ``event_id`` used in keys: itself, or its hash when long or odd."""
    if len(event_id) > MAX_ID_LENGTH or "\n" in event_id or "\t" in event_id:
        return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return event_id


class DeduplicationManager:
    """Claims, completes and releases event ids in Redis for one service and group.

    ``ttl_seconds`` is how long a ``done`` record (and a local cache entry) lives;
    ``processing_ttl_ms`` how long an unrenewed claim lives; ``clock`` is the
    monotonic clock that ages the local cache. ``sensor`` is told about store
    outages and taken-over claims.
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
        metrics: Any = None,
        sensor: Sensor | None = None,
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
        if sensor is None and metrics is not None:
            sensor = metrics.for_flow(self.consumer_group)
        self.sensor = sensor or Sensor()
        self._clock = clock
        self._key_prefix = f"{KEY_PREFIX}:{service_name}:{self.consumer_group}:"
        self.member = uuid.uuid4().hex
        self._next_token = 0
        self._held: dict[str, str] = {}  # single-id API: event id -> our token
        self._local: OrderedDict[str, float] = OrderedDict()
        self._claim_script = redis_client.register_script(_CLAIM_SCRIPT)
        self._done_script = redis_client.register_script(_DONE_SCRIPT)
        self._held_script = redis_client.register_script(_HELD_SCRIPT)
        self._peek_script = redis_client.register_script(_PEEK_SCRIPT)
        self._last_warning: float | None = None
        self._suppressed_warnings = 0
        self.unavailable_count = 0
        self.taken_over = 0

    # ------------------------------------------------------------------ keys, cache

    def key_for(self, event_id: str) -> str:
        """The Redis key of ``event_id`` for this service and consumer group."""
        return self._key_prefix + key_id(event_id)

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
        self.sensor.on_dedup_unavailable(n)
        now = self._clock()
        if self._last_warning is None or now - self._last_warning >= WARN_INTERVAL_S:
            logger.warning(
                "dedup store unreachable or failing during %s (%s: %s); policy %s; "
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
                f"dedup store failed during {operation}: {type(exc).__name__}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ claims

    async def claim_batch(
        self, event_ids: Sequence[str], *, partition: str = "", generation: int = -1
    ) -> list[tuple[ClaimResult, str | None]]:
        """Claim ids of one partition in one round trip; one (result, token) per id, in order.

        ``partition`` (``topic:partition``) and ``generation`` (the group generation
        of our assignment of it) let a new owner take over claims a previous
        owner of the partition left; ``generation`` -1 never takes over. An id
        repeated in the batch gets ``HELD_HERE`` after its first occurrence.
        """
        results: list[tuple[ClaimResult, str | None]] = [(ClaimResult.DUPLICATE, None)] * len(
            event_ids
        )
        pending: list[int] = []
        first_seen: dict[str, int] = {}
        for i, event_id in enumerate(event_ids):
            if self._cache_hit(event_id):
                continue
            if event_id in first_seen:
                results[i] = (ClaimResult.HELD_HERE, None)
                continue
            first_seen[event_id] = i
            pending.append(i)
        if not pending:
            return results
        base = f"{CLAIM_PREFIX}{self.member}|{partition}|{generation}|"
        first = self._next_token
        self._next_token += len(pending)
        sent_at = self._clock()
        try:
            flags, ttls = await self._claim_script(
                keys=[],
                args=[
                    self.processing_ttl_ms,
                    self._key_prefix,
                    base,
                    first,
                    self.member,
                    partition,
                    generation,
                    "\n".join(key_id(event_ids[i]) for i in pending),
                ],
            )
        except _STORE_ERRORS as exc:
            self._unavailable("claim", exc, len(pending))
            for i in pending:
                results[i] = (ClaimResult.BYPASSED, None)
            return results
        remaining = iter(ttls)
        taken = 0
        text = flags.decode() if isinstance(flags, bytes) else flags
        for n, (i, flag) in enumerate(zip(pending, text, strict=True)):
            result = _FLAGS[flag]
            token = f"{base}{first + n}" if result is ClaimResult.CLAIMED else None
            if flag == "T":
                taken += 1
            elif flag == "D":
                pttl = next(remaining)
                if isinstance(pttl, int) and pttl > 0:
                    self._cache_add(event_ids[i], sent_at + min(pttl / 1000, self.ttl_seconds))
            results[i] = (result, token)
        if taken:
            self.taken_over += taken
            self.sensor.on_claims_taken_over(taken)
            logger.warning(
                "took over %d dedup claim(s) a previous owner of %s left behind",
                taken,
                partition,
            )
        return results

    async def claim(self, event_id: str) -> ClaimResult:
        """Claim one id (the token is remembered for :meth:`mark_done` and :meth:`release`)."""
        result, token = (await self.claim_batch([event_id]))[0]
        if token is not None:
            self._held[event_id] = token
        return result

    async def claim_many(self, event_ids: Iterable[str]) -> dict[str, ClaimResult]:
        """Claim a batch of ids in one round trip; one entry per distinct id."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, ClaimResult] = {}
        for event_id, (result, token) in zip(ids, await self.claim_batch(ids), strict=True):
            out[event_id] = result
            if token is not None:
                self._held[event_id] = token
        return out

    # ------------------------------------------------------------------ held claims

    async def renew(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """Extend held claims ``(event_id, token)`` by ``processing_ttl_ms``; one flag each.

        False means the claim is no longer ours (it expired, or a new owner of
        the partition took it over). Under ``fail_open`` an unreachable store
        counts as renewed; under ``fail_closed`` it raises.
        """
        return await self._held_call("renew", claims, self.processing_ttl_ms)

    async def release_claims(self, claims: Sequence[tuple[str, str]]) -> None:
        """Drop held claims ``(event_id, token)`` so a retry or redelivery can run them.

        Only keys still holding our token are deleted: never a ``done`` record,
        never another worker's claim. An unreachable store is logged, not
        raised: the claims then expire by themselves.
        """
        await self._held_call("release", claims, 0, may_raise=False)

    async def _held_call(
        self, operation: str, claims: Sequence[tuple[str, str]], ms: int, *, may_raise: bool = True
    ) -> list[bool]:
        if not claims:
            return []
        packed = "\n".join(f"{key_id(event_id)}\t{token}" for event_id, token in claims)
        try:
            flags = await self._held_script(keys=[], args=[ms, self._key_prefix, packed])
        except _STORE_ERRORS as exc:
            self._unavailable(operation, exc, len(claims), may_raise=may_raise)
            return [True] * len(claims)
        text = flags.decode() if isinstance(flags, bytes) else flags
        return [flag == "1" for flag in text]

    async def refresh(self, event_id: str) -> bool:
        """Renew our single-id claim on ``event_id``; False when it is no longer ours."""
        token = self._held.get(event_id)
        if token is None:
            return False
        return (await self.renew([(event_id, token)]))[0]

    async def release(self, event_id: str) -> None:
        """Drop our single-id claim on ``event_id`` (see :meth:`release_claims`)."""
        token = self._held.pop(event_id, None)
        if token is not None:
            await self.release_claims([(event_id, token)])

    async def release_many(self, event_ids: Sequence[str]) -> None:
        """Drop our single-id claims on a batch of ids."""
        claims = [(e, t) for e in event_ids if (t := self._held.pop(e, None)) is not None]
        await self.release_claims(claims)

    # ------------------------------------------------------------------ completion

    async def mark_done_many(self, event_ids: Sequence[str]) -> None:
        """Record a batch of ids as handled with one script call (one round trip).

        When the store fails the ids are still remembered in the local cache;
        then nothing else happens under ``fail_open``, and ``fail_closed`` raises
        :class:`DedupUnavailableError` so the caller retries before committing.
        """
        if not event_ids:
            return
        sent_at = self._clock()
        try:
            await self._done_script(
                keys=[],
                args=[self.ttl_seconds * 1000, self._key_prefix, "\n".join(map(key_id, event_ids))],
            )
        except _STORE_ERRORS as exc:
            for event_id in event_ids:
                self._cache_add(event_id, sent_at + self.ttl_seconds)
            self._unavailable("mark_done", exc, len(event_ids))
            return
        for event_id in event_ids:
            self._held.pop(event_id, None)
            self._cache_add(event_id, sent_at + self.ttl_seconds)

    async def mark_done(self, event_id: str) -> None:
        """Record ``event_id`` as handled for ``ttl_seconds`` and cache it locally."""
        await self.mark_done_many((event_id,))

    # ------------------------------------------------------------------ plan API

    async def is_duplicate(self, event_id: str) -> bool:
        """True when ``event_id`` is recorded as handled; claims nothing.

        When the store fails: ``False`` under ``fail_open`` (handle it),
        :class:`DedupUnavailableError` under ``fail_closed``.
        """
        if self._cache_hit(event_id):
            return True
        sent_at = self._clock()
        try:
            value, pttl = await self._peek_script(keys=[self.key_for(event_id)], args=[])
        except _STORE_ERRORS as exc:
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
            "claims_taken_over": self.taken_over,
        }
