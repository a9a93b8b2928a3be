"""Dedup on a real 3-master Redis Cluster: batches across slots, races, MOVED/ASK, failover.

The store (``ClusterDedupStore``) is driven directly, then a service flow runs
on it (through ``use_cluster_dedup``) and skips a duplicate delivery.
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
from core.streaming.reliability.cluster_dedup_store import (
    ClusterDedupStore,
    ClusterStoreUnavailable,
    cluster_client,
)
from tests.cluster.conftest import RedisClusterInfra

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


async def _client(infra: RedisClusterInfra) -> RedisCluster:
    client = cluster_client(RedisSettings(url=SecretStr(infra.url), socket_timeout_s=1.0))
    await client.initialize()
    return client


def _ids(n: int) -> list[str]:
    base = uuid4().hex[:8]
    return [f"{base}-{i}" for i in range(n)]


async def test_a_batch_spans_every_master_with_one_script_call_per_shard(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    try:
        store = ClusterDedupStore(client, "svc", "grp", shards=32)
        ids = _ids(500)
        nodes = Counter(client.get_node_from_key(store.key_for(i)).port for i in ids)
        assert len(nodes) == 3, nodes  # the shards spread over all three masters
        for shard in range(32):
            keys = [store.key_for(i) for i in ids if store.shard_of(i) == shard]
            assert len({client.keyslot(k) for k in keys}) == 1  # one slot per shard

        claimed = await store.claim(ids, "processing:a", 30_000)
        assert len(claimed) == 500 and {r.flag for r in claimed.values()} == {"C"}
        await store.mark_done(ids[:200], 60_000)
        again = await store.claim(ids, "processing:b", 30_000)
        assert {again[i].flag for i in ids[:200]} == {"D"}
        assert all(50_000 < again[i].pttl <= 60_000 for i in ids[:200])
        assert {again[i].flag for i in ids[200:]} == {"P"}
        renewed = await store.refresh(ids[190:210], "processing:a", 45_000)
        assert [renewed[i] for i in ids[190:210]] == [False] * 10 + [True] * 10
        assert await store.release(ids, "processing:b") == 0  # never someone else's claim
        assert await store.release(ids, "processing:a") == 300  # never a done record
        assert await store.peek(ids[0]) == ("done", pytest.approx(60_000, abs=10_000))
        assert (await store.peek(ids[300]))[0] is None
    finally:
        await client.aclose()


async def test_racing_owners_never_both_claim_an_id(redis_cluster: RedisClusterInfra) -> None:
    clients = [await _client(redis_cluster) for _ in range(4)]
    try:
        stores = [ClusterDedupStore(c, "race", "g") for c in clients]
        ids = _ids(300)
        results = await asyncio.gather(
            *(s.claim(ids, f"processing:{n}", 30_000) for n, s in enumerate(stores))
        )
        winners = Counter(i for r in results for i, reply in r.items() if reply.flag == "C")
        assert set(winners) == set(ids) and set(winners.values()) == {1}
    finally:
        for c in clients:
            await c.aclose()


async def _node(port: int) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(host="127.0.0.1", port=port)


async def test_slot_migration_is_followed_through_ask_and_moved(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    store = ClusterDedupStore(client, "migrate", "g", shards=4)
    ids = _ids(40)
    shard_ids = [i for i in ids if store.shard_of(i) == 0]
    new_ids = [f"new-{i}" for i in range(200)]
    new_ids = [i for i in new_ids if store.shard_of(i) == 0][:5]
    slot = client.keyslot(store.key_for(shard_ids[0]))
    source_port = client.get_node_from_key(store.key_for(shard_ids[0])).port
    masters = {n.port for n in client.get_primaries()}
    target_port = min(masters - {source_port})
    source, target = await _node(source_port), await _node(target_port)
    try:
        await store.claim(shard_ids, "processing:a", 60_000)
        await store.mark_done(shard_ids[:3], 60_000)
        source_id = (await source.execute_command("CLUSTER", "MYID")).decode()
        target_id = (await target.execute_command("CLUSTER", "MYID")).decode()
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

        # A key not on the source is asked of the target (ASK): a new id is claimed there.
        fresh = await store.claim(new_ids[:1], "processing:a", 60_000)
        assert fresh[new_ids[0]].flag == "C"
        assert await target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1

        # Several keys of a slot being migrated are refused (TRYAGAIN) rather than claimed
        # on one node while a record sits on the other: the store reports it unavailable.
        for batch in ([shard_ids[0], new_ids[1]], new_ids[1:]):
            with pytest.raises(ClusterStoreUnavailable):
                await store.claim(batch, "processing:b", 60_000)

        keys = await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        await source.execute_command(
            "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys
        )
        for port in masters:
            node = await _node(port)
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            await node.aclose()
        # The client's slot map is stale now: MOVED sends it to the target, records intact.
        seen = await store.claim(shard_ids + new_ids, "processing:b", 60_000)
        assert {seen[i].flag for i in shard_ids[:3]} == {"D"}
        assert {seen[i].flag for i in shard_ids[3:] + new_ids[:1]} == {"P"}
        assert {seen[i].flag for i in new_ids[1:]} == {"C"}
        assert client.get_node_from_key(store.key_for(shard_ids[0])).port == target_port
    finally:
        await source.aclose()
        await target.aclose()
        await client.aclose()


async def test_master_failover_is_survived_and_done_marks_kept(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    store = ClusterDedupStore(client, "failover", "g")
    ids = _ids(200)
    try:
        await store.claim(ids, "processing:a", 60_000)
        await store.mark_done(ids, 600_000)
        victim_port = client.get_node_from_key(store.key_for(ids[0])).port
        victim = await _node(victim_port)
        await victim.execute_command("WAIT", 1, 2000)  # replicated before the crash
        await victim.aclose()
        victim_no = redis_cluster.ports.index(victim_port) + 1

        began = time.monotonic()
        kill = asyncio.ensure_future(redis_cluster.arun("kill", str(victim_no)))
        unavailable = 0
        while True:
            try:
                replies = await store.claim(ids, "processing:b", 60_000)
                if kill.done():
                    break
            except ClusterStoreUnavailable:
                unavailable += 1
            await asyncio.sleep(0.2)
        await kill
        took = time.monotonic() - began
        assert {r.flag for r in replies.values()} == {"D"}, Counter(
            r.flag for r in replies.values()
        )
        assert unavailable > 0  # the outage was seen, as a transient error
        assert took < 30
        assert client.get_node_from_key(store.key_for(ids[0])).port != victim_port
    finally:
        await client.aclose()
        await redis_cluster.arun("resume", str(victim_no))


@pytest.mark.kafka
async def test_a_service_flow_dedups_on_the_cluster(
    redis_cluster: RedisClusterInfra, kafka_bootstrap: str, unique_name: str
) -> None:
    from core.streaming.patterns.stream_service_builder import StreamServiceBuilder
    from tests.cluster.cluster_dedup import use_cluster_dedup
    from tests.integration.orchestration.helpers import kafka_settings, produce, wait_until

    client = await _client(redis_cluster)
    settings = kafka_settings(kafka_bootstrap)
    handled: list[int] = []

    async def handle(event: dict[str, Any]) -> None:
        handled.append(event["data"]["n"])

    service = (
        StreamServiceBuilder(unique_name, settings.redpanda, settings)
        .with_redis(client)  # type: ignore[arg-type]
        .add_consumer_handler([f"{unique_name}.in"], f"{unique_name}.g", handle)
        .build()
    )
    use_cluster_dedup(service, client)
    await service.start()
    try:
        ids = await produce(
            kafka_bootstrap, f"{unique_name}.in", [(None, {"n": i}) for i in range(30)]
        )
        from core.config.settings import RedpandaSettings
        from core.streaming.infrastructure.message_producer import MessageProducer

        again = MessageProducer(RedpandaSettings(bootstrap_servers=kafka_bootstrap), "again")
        try:
            for n in (3, 7):
                await again.send(f"{unique_name}.in", None, {"n": n}, "x", event_id=ids[n])
        finally:
            await again.stop()
        layer = service.flows[0].layer
        await wait_until(lambda: layer.outcomes["duplicate"] >= 2, 30, "duplicates skipped")
    finally:
        await service.stop()
        await client.aclose()
    assert sorted(handled) == list(range(30))
