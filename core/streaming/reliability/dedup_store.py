"""The dedup store: batches of event ids claimed, completed and released in Redis.

An event id of one service and consumer group is, in Redis:

- *unknown*: nobody has handled it (or its record aged out);
- *claimed*: a field of the shard's claims hash holds ``<deadline>|<token>``, the
  token being ``p|<member>|<topic:partition>|<generation>|<n>``, one per claim
  call (the ids of one call are distinct), so two lanes of one process are as
  distinct as two processes. It lapses at its deadline (``processing_ttl_ms``
  after it was made or last renewed; the flow renews what it holds while the
  handler runs);
- *done*: a member of the shard's done set of the current or the previous time
  bucket (buckets are ``ttl_seconds`` long), so an id counts as handled for
  between ``ttl_seconds`` and twice that.

Keeping ids in a few hashes and sets instead of a key per id is what makes a
batch cheap for Redis: a claim is one script call per shard and partition (two
set lookups, one hash lookup and one hash write per id), a done mark one script
call per shard (a set add and a hash delete per id); the ids travel as one JSON
array. Keys carry a hash tag per shard (``dedup:{<service>:<group>:<shard>}:...``),
so every script touches one slot and runs on a Redis Cluster as well; ``shards``
spreads a busy flow over masters (the layout is :mod:`dedup_keys`).

A claim left on a partition by a member of an older group generation is taken
over at once by the partition's new owner; a live claim elsewhere is waited for.
A claim call that failed or was cancelled on the client may still have run (a
frozen Redis runs the queued command when it continues): its number is sent with later claim calls
(:mod:`failed_claims`), so such claims are taken back at once by their member.
Ids longer than ``MAX_ID_LENGTH``, holding separators or not valid UTF-8 are
replaced by their SHA-256. A bounded local cache (:mod:`done_cache`) remembers
ids known to be done, each entry expiring no later than its Redis record
(monotonic clock).

When Redis is unreachable or answers with an error (READONLY, OOM, LOADING),
``failure_policy`` decides (:mod:`store_outages`): ``fail_open`` runs the handler without dedup
(``ClaimResult.BYPASSED``, counted and logged); ``fail_closed`` raises
:class:`DedupUnavailableError` so the caller pauses and retries. Either way no
message is dropped. :class:`~core.streaming.reliability.deduplication_manager.DeduplicationManager`
adds the plan's one-id API on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from core.streaming.clients import REDIS_ERRORS, TRANSIENT_CLIENT_ERRORS, Redis
from core.streaming.reliability.dedup_keys import DedupKeys
from core.streaming.reliability.dedup_scripts import (
    _CLAIM_SCRIPT,
    _DONE_CALL_IDS,
    _DONE_SCRIPT,
    _HELD_SCRIPT,
    _PEEK_CLAIM_SCRIPT,
    _SCRIPT_IDS,
    CLAIM_PREFIX,
    ClaimResult,
    id_array,
    key_id,
)
from core.streaming.reliability.done_cache import DoneCache
from core.streaming.reliability.failed_claims import FailedClaimCalls
from core.streaming.reliability.sensors import Sensor
from core.streaming.reliability.store_outages import FailurePolicy, StoreOutages

logger = logging.getLogger(__name__)

STORE_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_CLIENT_ERRORS, *REDIS_ERRORS)


class DedupStore(DedupKeys):
    """Claims, completes and releases batches of event ids in Redis for one service and group.

    ``ttl_seconds`` is how long a done id is remembered (at least; at most twice
    that); ``processing_ttl_ms`` how long an unrenewed claim lives; ``shards``
    how many claims hashes and done sets the ids spread over (one per hash slot
    on a cluster); ``clock`` is the monotonic clock that ages the local cache,
    ``wall_clock`` picks the time bucket of done sets. ``sensor`` is told about
    store outages and taken-over claims.
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
        shards: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        metrics: Any = None,
        sensor: Sensor | None = None,
    ) -> None:
        super().__init__(service_name, consumer_group, ttl_seconds, shards, wall_clock)
        if processing_ttl_ms <= 0:
            raise ValueError("processing_ttl_ms must be positive")
        self.redis_client = redis_client
        self.processing_ttl_ms = processing_ttl_ms
        self.local_cache_size = local_cache_size
        if sensor is None and metrics is not None:
            sensor = metrics.for_flow(self.consumer_group)
        self.sensor = sensor or Sensor()
        self._clock = clock
        self._outages = StoreOutages(failure_policy, self.sensor, clock)
        self.member = uuid.uuid4().hex
        self._next_token = 0
        self._held: dict[str, str] = {}  # single-id API: event id -> our token
        self._local = DoneCache(local_cache_size)
        self._failed_calls = FailedClaimCalls(processing_ttl_ms)
        self._claim_script = redis_client.register_script(_CLAIM_SCRIPT)
        self._held_script = redis_client.register_script(_HELD_SCRIPT)
        self._done_script = redis_client.register_script(_DONE_SCRIPT)
        self._peek_claim_script = redis_client.register_script(_PEEK_CLAIM_SCRIPT)
        self.taken_over = 0

    # ------------------------------------------------------------------ local cache

    def _cache_hit(self, event_id: str) -> bool:
        return self._local.hit(event_id, self._clock())

    def _cache_add(self, event_ids: Iterable[str], expires_at: float) -> None:
        self._local.add(event_ids, expires_at)

    def cached(self, event_id: str) -> bool:
        """True when the local cache knows ``event_id`` is done (no round trip)."""
        return self._cache_hit(event_id)

    @property
    def local_cache_len(self) -> int:
        """Entries in the local cache, expired ones included until looked up."""
        return len(self._local)

    # ------------------------------------------------------------------ unavailability

    @property
    def failure_policy(self) -> FailurePolicy:
        """``fail_open`` or ``fail_closed``: what a failed store call leads to."""
        return self._outages.policy

    @property
    def unavailable_count(self) -> int:
        """Ids whose store calls failed (counted once per failed call)."""
        return self._outages.count

    def _unavailable(
        self, operation: str, exc: BaseException, n: int, *, may_raise: bool = True
    ) -> None:
        """Count and log (rate-limited) a failed round trip; raise under fail_closed."""
        self._outages.failed(operation, exc, n, may_raise=may_raise)

    # ------------------------------------------------------------------ claims

    def _spread(
        self, event_ids: Sequence[str], results: list[tuple[ClaimResult, str | None]]
    ) -> dict[int, list[int]]:
        """Indexes of the ids to ask the store about, per shard.

        Ids the local cache knows are done keep their ``DUPLICATE`` result; an id
        repeated in the batch gets ``HELD_HERE`` after its first occurrence.
        """
        by_shard: dict[int, list[int]] = {}
        first_seen: set[str] = set()
        local, now = self._local, self._clock()
        for i, event_id in enumerate(event_ids):
            if local.hit(event_id, now):
                continue
            if event_id in first_seen:
                results[i] = (ClaimResult.HELD_HERE, None)
                continue
            first_seen.add(event_id)
            by_shard.setdefault(self.shard_of(event_id), []).append(i)
        return by_shard

    async def claim_batch(
        self, event_ids: Sequence[str], *, partition: str = "", generation: int = -1
    ) -> list[tuple[ClaimResult, str | None]]:
        """Claim ids of one partition; one (result, token) per id, in order.

        One script call per shard, pipelined. ``partition`` (``topic:partition``)
        and ``generation`` (the group generation of our assignment of it) let a
        new owner take over claims a previous owner of the partition left;
        ``generation`` -1 never takes over. An id repeated in the batch gets
        ``HELD_HERE`` after its first occurrence.
        """
        count = len(event_ids)
        results: list[tuple[ClaimResult, str | None]] = [(ClaimResult.DUPLICATE, None)] * count
        if (
            self.shards == 1
            and count
            and event_ids[0] not in self._local
            and len(set(event_ids)) == count
        ):
            # The usual batch: one shard, distinct ids, and not a redelivery of ids
            # known done here (its first id is not; Redis answers for the others).
            by_shard: dict[int, list[int]] = {0: list(range(count))}
        else:
            by_shard = self._spread(event_ids, results)
        if not by_shard:
            return results
        # Lua unpacks the ids onto its stack: at most _SCRIPT_IDS per call.
        chunks = [
            (shard, indexes[n : n + _SCRIPT_IDS])
            for shard, indexes in by_shard.items()
            for n in range(0, len(indexes), _SCRIPT_IDS)
        ]
        base = f"{CLAIM_PREFIX}{self.member}|{partition}|{generation}|"
        bucket = self.current_bucket()
        sent_at = self._clock()
        calls: list[tuple[list[int], str]] = []
        requests = []
        for shard, indexes in chunks:
            number = self._next_token
            self._next_token += 1
            calls.append((indexes, f"{base}{number}"))
            requests.append(
                self._claim_script(
                    keys=[
                        self.claims_key(shard),
                        self.done_key(shard, bucket),
                        self.done_key(shard, bucket - 1),
                    ],
                    args=[
                        self.processing_ttl_ms,
                        base,
                        number,
                        self.member,
                        partition,
                        generation,
                        id_array(
                            list(event_ids)
                            if len(indexes) == count
                            else [event_ids[i] for i in indexes]
                        ),
                        self._failed_calls.arg(),
                    ],
                )
            )
        try:
            # One script call per shard, concurrent (a pipeline would ask Redis
            # whether its scripts are loaded first: one more round trip each time).
            replies = [await requests[0]] if len(requests) == 1 else await asyncio.gather(*requests)
        except BaseException as exc:
            # Some of these calls may have run, or may still run: take their claims back later.
            self._failed_calls.failed(int(token.rpartition("|")[2]) for _, token in calls)
            if not isinstance(exc, STORE_ERRORS):
                raise  # cancelled, or a bug: nothing to decide here
            self._unavailable("claim", exc, sum(len(indexes) for indexes, _ in calls))
            local, now = self._local, self._clock()
            for indexes in by_shard.values():
                for i in indexes:
                    if not local.hit(event_ids[i], now):  # known done here: still a duplicate
                        results[i] = (ClaimResult.BYPASSED, None)
            return results
        if len(self._failed_calls):
            self._failed_calls.succeeded(self._clock())
        done: list[str] = []
        taken = retaken = 0
        for (indexes, token), flags in zip(calls, replies, strict=True):
            text = flags.decode() if isinstance(flags, bytes) else flags
            if len(text) != len(indexes):
                raise ValueError(f"claim script answered {len(text)} flags for {len(indexes)} ids")
            if text.count("C") == len(text):
                claimed = (ClaimResult.CLAIMED, token)
                if len(indexes) == count:
                    results = [claimed] * count  # the usual batch: one call, all claimed
                    continue
                for i in indexes:
                    results[i] = claimed
                continue
            for i, flag in zip(indexes, text, strict=True):
                if flag == "C" or flag == "T" or flag == "R":
                    results[i] = (ClaimResult.CLAIMED, token)
                    taken += flag == "T"
                    retaken += flag == "R"
                elif flag == "D":
                    results[i] = (ClaimResult.DUPLICATE, None)
                    done.append(event_ids[i])
                elif flag == "H":
                    results[i] = (ClaimResult.HELD_HERE, None)
                else:
                    results[i] = (ClaimResult.IN_PROGRESS, None)
        if done:
            self._cache_add(done, sent_at + self.done_lifetime(bucket))
        if retaken:
            logger.info(
                "took back %d dedup claim(s) of this member's claim calls that failed", retaken
            )
        if taken:
            self.taken_over += taken
            self.sensor.on_claims_taken_over(taken)
            logger.warning(
                "took over %d dedup claim(s) a previous owner of %s left behind",
                taken,
                partition,
            )
        return results

    # ------------------------------------------------------------------ held claims

    async def renew(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """Extend held claims ``(event_id, token)`` by ``processing_ttl_ms``; one flag each.

        False means the claim is no longer ours (it lapsed, or a new owner of the
        partition took it over). Under ``fail_open`` an unreachable store counts
        as renewed; under ``fail_closed`` it raises.
        """
        return await self._held_call("renew", claims, self.processing_ttl_ms)

    async def release_claims(self, claims: Sequence[tuple[str, str]]) -> None:
        """Drop held claims ``(event_id, token)`` so a retry or redelivery can run them.

        Only claims still holding our token are dropped, never another worker's.
        An unreachable store is logged, not raised: the claims then lapse.
        """
        await self._held_call("release", claims, 0, may_raise=False)

    async def _held_call(
        self, operation: str, claims: Sequence[tuple[str, str]], ms: int, *, may_raise: bool = True
    ) -> list[bool]:
        if not claims:
            return []
        by_shard: dict[int, list[int]] = {}
        for i, (event_id, _) in enumerate(claims):
            by_shard.setdefault(self.shard_of(event_id), []).append(i)
        requests = []
        for shard, indexes in by_shard.items():
            lines = "\n".join([f"{key_id(claims[i][0])}\t{claims[i][1]}" for i in indexes])
            requests.append(self._held_script(keys=[self.claims_key(shard)], args=[ms, lines]))
        try:
            replies = [await requests[0]] if len(requests) == 1 else await asyncio.gather(*requests)
        except STORE_ERRORS as exc:
            self._unavailable(operation, exc, len(claims), may_raise=may_raise)
            return [True] * len(claims)
        flags = [False] * len(claims)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            text = reply.decode() if isinstance(reply, bytes) else reply
            for i, flag in zip(indexes, text, strict=True):
                flags[i] = flag == "1"
        return flags

    # ------------------------------------------------------------------ completion

    async def mark_done_many(self, event_ids: Sequence[str]) -> None:
        """Record a batch of ids as handled (one pipelined round trip) and drop their claims.

        When the store fails the ids are still remembered in the local cache;
        then nothing else happens under ``fail_open``, and ``fail_closed`` raises
        :class:`DedupUnavailableError` so the caller retries before committing.
        """
        if not event_ids:
            return
        sent_at = self._clock()
        bucket = self.current_bucket()
        by_shard: dict[int, list[str]] = {}
        if self.shards == 1:
            by_shard[0] = list(event_ids)
        else:
            for event_id in event_ids:
                by_shard.setdefault(self.shard_of(event_id), []).append(event_id)
        # Kept long enough to be the previous bucket for a whole bucket.
        keep_ms = 2 * self.ttl_seconds * 1000 + 60_000
        requests = []
        for shard, ids in by_shard.items():
            for n in range(0, len(ids), _DONE_CALL_IDS):
                requests.append(
                    self._done_script(
                        keys=[self.claims_key(shard), self.done_key(shard, bucket)],
                        args=[keep_ms, id_array(ids[n : n + _DONE_CALL_IDS])],
                    )
                )
        try:
            if len(requests) == 1:
                await requests[0]
            else:
                await asyncio.gather(*requests)
        except STORE_ERRORS as exc:
            self._cache_add(event_ids, sent_at + self.ttl_seconds)
            self._unavailable("mark_done", exc, len(event_ids))
            return
        if self._held:
            for event_id in event_ids:
                self._held.pop(event_id, None)
        self._cache_add(event_ids, sent_at + self.ttl_seconds)

    def health(self) -> dict[str, Any]:
        """Counters for a health report."""
        return {
            "failure_policy": self.failure_policy,
            "local_cache": len(self._local),
            "unavailable": self.unavailable_count,
            "claims_taken_over": self.taken_over,
        }
