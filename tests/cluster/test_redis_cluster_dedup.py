"""Dedup on a real 3-master Redis Cluster: claims, takeovers, races, a slot migration, failover.

A ``redis+cluster://`` URL makes ``create_redis`` return a cluster client; the
``DeduplicationManager`` keeps a flow's records in hash-tagged shards (one hash
slot each), so its scripts run there unchanged, one call per shard in parallel.
The last test runs a whole service selected by its Redis URL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as redis_asyncio
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from core.config.settings import RedisSettings
from core.streaming.clients import create_redis
from core.streaming.reliability.deduplication_manager import (
    ClaimResult,
    DeduplicationManager,
    DedupUnavailableError,
)
from tests.cluster.conftest import RedisClusterInfra

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

C, D, P, H = (ClaimResult.CLAIMED, ClaimResult.DUPLICATE, ClaimResult.IN_PROGRESS,
              ClaimResult.HELD_HERE)  # fmt: skip


async def _client(infra: RedisClusterInfra) -> RedisCluster:
    client = create_redis(RedisSettings(url=SecretStr(infra.url), socket_timeout_s=1.0))
    assert isinstance(client, RedisCluster)
    await client.initialize()
    return client


def _ids(n: int) -> list[str]:
    base = uuid4().hex[:8]
    return [f"{base}-{i}" for i in range(n)]


def _manager(client: RedisCluster, group: str, **kwargs: Any) -> DeduplicationManager:
    kwargs.setdefault(
        "shards", RedisSettings(url=SecretStr("redis+cluster://x:1")).dedup_shard_count
    )
    return DeduplicationManager(client, "svc", consumer_group=group, **kwargs)  # type: ignore[arg-type]


def _flags(results: list[tuple[ClaimResult, str | None]]) -> list[ClaimResult]:
    return [r for r, _ in results]


async def test_claims_done_marks_and_releases_across_every_master(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    group = uuid4().hex[:6]
    try:
        first, second = _manager(client, group), _manager(client, group)
        assert first.shards == 16
        ids = _ids(500)
        masters = Counter(client.get_node_from_key(first.key_for(i)).port for i in ids)
        assert len(masters) == 3, masters  # one batch spreads over all three masters

        claimed = await first.claim_batch(ids, partition="t:0", generation=1)
        assert set(_flags(claimed)) == {C}
        assert _flags(await second.claim_batch(ids[:5], partition="t:0", generation=1)) == [P] * 5
        assert _flags(await first.claim_batch(ids[:3], partition="t:0")) == [H] * 3

        await first.mark_done_many(ids[:200])
        seen = _flags(await second.claim_batch(ids, partition="t:0", generation=1))
        assert set(seen[:200]) == {D} and set(seen[200:]) == {P}

        held = [(i, t) for i, (_, t) in zip(ids[190:210], claimed[190:210], strict=True)]
        assert all(t is not None for _, t in held)
        assert await first.renew(held) == [False] * 10 + [True] * 10  # done ones are not held
        await first.release_claims([(i, t) for i, (_, t) in zip(ids, claimed, strict=True) if t])
        after = _flags(await second.claim_batch(ids, partition="t:0", generation=1))
        assert set(after[:200]) == {D} and set(after[200:]) == {C}
        assert await second.is_duplicate(ids[0]) and not await second.is_duplicate(ids[300])
    finally:
        await client.aclose()


async def test_a_new_owner_takes_over_an_older_generations_claims(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    group = uuid4().hex[:6]
    try:
        old, new = _manager(client, group), _manager(client, group)
        ids = _ids(60)
        await old.claim_batch(ids, partition="t:3", generation=4)
        assert set(_flags(await new.claim_batch(ids, partition="t:3", generation=5))) == {C}
        assert new.taken_over == 60
    finally:
        await client.aclose()


async def test_racing_members_never_both_claim_an_id(redis_cluster: RedisClusterInfra) -> None:
    clients = [await _client(redis_cluster) for _ in range(4)]
    group = uuid4().hex[:6]
    try:
        managers = [_manager(c, group) for c in clients]
        ids = _ids(300)
        results = await asyncio.gather(
            *(m.claim_batch(ids, partition="t:0", generation=2) for m in managers)
        )
        winners = Counter(
            i for r in results for i, (flag, _) in zip(ids, r, strict=True) if flag is C
        )
        assert set(winners) == set(ids) and set(winners.values()) == {1}
    finally:
        for c in clients:
            await c.aclose()


async def _node(port: int) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(host="127.0.0.1", port=port)


async def test_a_slot_migration_is_refused_then_followed(redis_cluster: RedisClusterInfra) -> None:
    """While a shard's slot migrates, claims on it fail (never a wrong answer); after, MOVED."""
    client = await _client(redis_cluster)
    group = uuid4().hex[:6]
    dedup = _manager(client, group, shards=4, failure_policy="fail_closed")
    ids = [i for i in _ids(80) if dedup.shard_of(i) == 0][:12]
    slot = client.keyslot(dedup.claims_key(0))
    source_port = client.get_node_from_key(dedup.claims_key(0)).port
    masters = {n.port for n in client.get_primaries()}
    target_port = min(masters - {source_port})
    source, target = await _node(source_port), await _node(target_port)
    try:
        await dedup.claim_batch(ids, partition="t:0", generation=1)
        await dedup.mark_done_many(ids[:3])
        source_id = (await source.execute_command("CLUSTER", "MYID")).decode()
        target_id = (await target.execute_command("CLUSTER", "MYID")).decode()
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

        other = _manager(client, group, shards=4, failure_policy="fail_closed")
        with pytest.raises(DedupUnavailableError):
            await other.claim_batch(ids, partition="t:0", generation=1)

        keys = await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        assert keys  # the claims hash and the done set of this shard
        await source.execute_command(
            "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys
        )
        for port in masters:
            node = await _node(port)
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            await node.aclose()
        # The client's slot map is stale now: MOVED sends it to the target, records intact.
        seen = _flags(await other.claim_batch(ids, partition="t:0", generation=1))
        assert seen == [D] * 3 + [P] * (len(ids) - 3)
        assert client.get_node_from_key(dedup.claims_key(0)).port == target_port
    finally:
        await source.aclose()
        await target.aclose()
        await client.aclose()


async def test_master_failover_is_survived_and_done_marks_kept(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    group = uuid4().hex[:6]
    dedup = _manager(client, group, failure_policy="fail_closed")
    ids = _ids(200)
    victim_no = 0
    try:
        await dedup.claim_batch(ids, partition="t:0", generation=1)
        await dedup.mark_done_many(ids)
        victim_port = client.get_node_from_key(dedup.key_for(ids[0])).port
        for port in {n.port for n in client.get_primaries()}:
            node = await _node(port)
            await node.execute_command("WAIT", 1, 2000)  # replicated before the crash
            await node.aclose()
        victim_no = redis_cluster.ports.index(victim_port) + 1

        reader = _manager(client, group, failure_policy="fail_closed", local_cache_size=0)
        began = time.monotonic()
        kill = asyncio.ensure_future(redis_cluster.arun("kill", str(victim_no)))
        unavailable = 0
        while True:
            try:
                results = await reader.claim_batch(ids, partition="t:0", generation=1)
                if kill.done():
                    break
            except DedupUnavailableError:
                unavailable += 1
            await asyncio.sleep(0.2)
        await kill
        assert set(_flags(results)) == {D}
        assert unavailable > 0  # the outage was seen, as a retryable error
        assert time.monotonic() - began < 30
        assert client.get_node_from_key(dedup.key_for(ids[0])).port != victim_port
    finally:
        await client.aclose()
        if victim_no:
            await redis_cluster.arun("resume", str(victim_no))


@pytest.mark.kafka
async def test_a_service_on_a_cluster_url_dedups_there(
    redis_cluster: RedisClusterInfra, kafka_bootstrap: str, unique_name: str
) -> None:
    from core.config.settings import RedpandaSettings
    from core.streaming.infrastructure.message_producer import MessageProducer
    from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
    from tests.integration.orchestration.helpers import kafka_settings, produce, wait_until

    settings = kafka_settings(kafka_bootstrap).model_copy(
        update={"redis": RedisSettings(url=SecretStr(redis_cluster.url))}
    )
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    topic = f"{unique_name}.in"
    service = (
        StreamServiceBuilder(unique_name, settings.redpanda, settings)
        .with_redis()
        .add_consumer_handler([topic], f"{unique_name}.g", handle)
        .build()
    )
    await service.start()
    try:
        ids = await produce(kafka_bootstrap, topic, [(None, {"n": i}) for i in range(30)])
        again = MessageProducer(RedpandaSettings(bootstrap_servers=kafka_bootstrap), "again")
        try:
            for n in (3, 7):
                await again.send(topic, None, {"n": n}, "x", event_id=ids[n])
        finally:
            await again.stop()
        layer = service.flows[0].layer
        await wait_until(
            lambda: len(handled) >= 30 and layer.outcomes.get("duplicate", 0) >= 2,
            30,
            "all handled and both copies skipped",
        )
    finally:
        await service.stop()
    assert sorted(handled) == list(range(30))
    client = await _client(redis_cluster)
    try:
        keys = [k async for k in client.scan_iter(match=f"dedup:{{{unique_name}:*", count=1000)]
        slots = {client.keyslot(k) for k in keys}
        assert len(slots) > 1  # the flow's records are spread over shards
    finally:
        await client.aclose()
