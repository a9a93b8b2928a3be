"""Test-side wiring of ``ClusterDedupStore`` into today's ``DeduplicationManager``.

The manager keeps its local cache, failure policy and metrics; only its Redis
round trips go to the cluster store. ``use_cluster_dedup`` swaps the
deduplicator of every flow of a built service, which is how the cluster tests
and the chaos workload run flows on a Redis Cluster until the builder selects
the store itself (``RedisSettings.is_cluster``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio.cluster import RedisCluster

from core.streaming.clients import TRANSIENT_CLIENT_ERRORS
from core.streaming.orchestration.service_orchestrator import ServiceOrchestrator
from core.streaming.reliability.cluster_dedup_store import ClusterDedupStore
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
)


class ClusterDeduplicationManager(DeduplicationManager):
    """A ``DeduplicationManager`` whose Redis calls go to a Redis Cluster."""

    def __init__(self, client: RedisCluster, *args: object, **kwargs: object) -> None:
        super().__init__(client, *args, **kwargs)  # type: ignore[arg-type]
        self.store = ClusterDedupStore(client, self.service_name, self.consumer_group)

    def key_for(self, event_id: str) -> str:
        return self.store.key_for(event_id)

    async def claim(self, event_id: str) -> ClaimResult:
        return (await self.claim_many([event_id]))[event_id]

    async def claim_many(self, event_ids: Iterable[str]) -> dict[str, ClaimResult]:
        results: dict[str, ClaimResult] = {}
        pending: list[str] = []
        for event_id in event_ids:
            if event_id in results:
                continue
            if self.cached(event_id):
                results[event_id] = ClaimResult.DUPLICATE
            else:
                results[event_id] = ClaimResult.CLAIMED
                pending.append(event_id)
        if not pending:
            return results
        sent_at = self._clock()
        try:
            replies = await self.store.claim(pending, self.owner_value, self.processing_ttl_ms)
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("claim_many", exc, len(pending))
            return {**results, **dict.fromkeys(pending, ClaimResult.BYPASSED)}
        for event_id in pending:
            reply = replies[event_id]
            if reply.flag == "C":
                results[event_id] = ClaimResult.CLAIMED
            elif reply.flag == "D":
                if reply.pttl > 0:
                    self._cache_add(event_id, sent_at + min(reply.pttl / 1000, self.ttl_seconds))
                results[event_id] = ClaimResult.DUPLICATE
            else:
                results[event_id] = ClaimResult.IN_PROGRESS
        return results

    async def mark_done_many(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        sent_at = self._clock()
        for event_id in event_ids:
            self._cache_add(event_id, sent_at + self.ttl_seconds)
        try:
            await self.store.mark_done(event_ids, self.ttl_seconds * 1000)
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("mark_done", exc, len(event_ids))

    async def refresh(self, event_id: str) -> bool:
        try:
            renewed = await self.store.refresh([event_id], self.owner_value, self.processing_ttl_ms)
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("refresh", exc, 1)
            return True
        return renewed[event_id]

    async def release_many(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        try:
            await self.store.release(event_ids, self.owner_value)
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("release", exc, len(event_ids), may_raise=False)

    async def is_duplicate(self, event_id: str) -> bool:
        if self.cached(event_id):
            return True
        try:
            value, _ = await self.store.peek(event_id)
        except TRANSIENT_CLIENT_ERRORS as exc:
            self._unavailable("is_duplicate", exc, 1)
            return False
        return value == "done"


def use_cluster_dedup(service: ServiceOrchestrator, client: RedisCluster) -> None:
    """Give every flow of ``service`` that has dedup a cluster-backed deduplicator."""
    for layer in service.reliability_layers:
        old = layer.deduplicator
        if old is None:
            continue
        layer.deduplicator = ClusterDeduplicationManager(
            client,
            old.service_name,
            old.ttl_seconds,
            consumer_group=old.consumer_group,
            processing_ttl_ms=old.processing_ttl_ms,
            local_cache_size=old.local_cache_size,
            failure_policy=old.failure_policy,
            metrics=old.metrics,
        )
