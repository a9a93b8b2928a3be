"""Effectively-once side effects: claim an event id in Redis before handling it.

:class:`DeduplicationManager` is the plan's dedup API: one event id at a time
(:meth:`~DeduplicationManager.claim`, :meth:`~DeduplicationManager.mark_done`,
:meth:`~DeduplicationManager.is_duplicate`, ...) over the batch store of
:mod:`core.streaming.reliability.dedup_store`, which the flows use directly (the
store's layout and failure policies are described there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.streaming.reliability.dedup_scripts import (
    CLAIM_PREFIX,
    DEFAULT_GROUP,
    DONE,
    KEY_PREFIX,
    MAX_ID_LENGTH,
    ClaimResult,
    DedupUnavailableError,
    key_id,
)
from core.streaming.reliability.dedup_store import STORE_ERRORS, DedupStore
from core.streaming.reliability.store_outages import FailurePolicy

__all__ = [
    "CLAIM_PREFIX",
    "DEFAULT_GROUP",
    "DONE",
    "KEY_PREFIX",
    "MAX_ID_LENGTH",
    "ClaimResult",
    "DedupUnavailableError",
    "DeduplicationManager",
    "FailurePolicy",
    "key_id",
]


class DeduplicationManager(DedupStore):
    """The dedup store of one service and group, with the plan's one-id API.

    A claim made here is remembered by id (its token kept), so
    :meth:`mark_done`, :meth:`refresh` and :meth:`release` take just the id.
    """

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

    async def drop_claim(self, event_id: str) -> None:
        """Delete whatever claim ``event_id`` has, whoever holds it (an operator's tool)."""
        await self.redis_client.hdel(self.key_for(event_id), key_id(event_id))

    async def mark_done(self, event_id: str) -> None:
        """Record ``event_id`` as handled and cache it locally."""
        await self.mark_done_many((event_id,))

    async def is_duplicate(self, event_id: str) -> bool:
        """True when ``event_id`` is recorded as handled; claims nothing.

        When the store fails: ``False`` under ``fail_open`` (handle it),
        :class:`DedupUnavailableError` under ``fail_closed``.
        """
        if self._cache_hit(event_id):
            return True
        sent_at = self._clock()
        try:
            done = await self._done_in_redis(event_id)
        except STORE_ERRORS as exc:
            self._unavailable("is_duplicate", exc, 1)
            return False
        if done:
            self._cache_add((event_id,), sent_at + self.done_lifetime(self.current_bucket()))
        return done

    async def _done_in_redis(self, event_id: str) -> bool:
        shard, bucket, kid = self.shard_of(event_id), self.current_bucket(), key_id(event_id)
        async with self.redis_client.pipeline(transaction=False) as pipe:
            pipe.sismember(self.done_key(shard, bucket), kid)
            pipe.sismember(self.done_key(shard, bucket - 1), kid)
            now, before = await pipe.execute()
        return bool(now) or bool(before)

    async def state(self, event_id: str) -> tuple[str | None, int]:
        """What Redis holds for ``event_id``: (``"done"``, 0), (a claim token, ms left) or
        (None, 0). For tools and tests; no local cache is consulted."""
        if await self._done_in_redis(event_id):
            return DONE, 0
        token, left = await self._peek_claim_script(
            keys=[self.key_for(event_id)], args=[key_id(event_id)]
        )
        if not token or left <= 0:
            return None, 0
        return (token.decode() if isinstance(token, bytes) else token), int(left)

    async def mark_processed(self, event_id: str) -> None:
        """Record ``event_id`` as handled (the plan's name for :meth:`mark_done`)."""
        await self.mark_done(event_id)
