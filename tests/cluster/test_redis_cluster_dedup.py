"""Dedup on a real 3-master Redis Cluster: the manager's claims, races, MOVED/ASK, failover.

``DeduplicationManager`` on a ``redis+cluster://`` client uses the cluster store
(``core.streaming.redis_dedup.ClusterDedupStore``); the tests drive the manager
as the flows do, the store where a slot migration needs key-level control, and
then a whole service selected by its Redis URL.
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
from core.streaming.redis_dedup import ClusterDedupStore, ClusterStoreUnavailable
from core.streaming.reliability.deduplication_manager import ClaimResult, DeduplicationManager
from tests.cluster.conftest import RedisClusterInfra

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


async def _client(infra: RedisClusterInfra) -> RedisCluster:
    client = create_redis(RedisSettings(url=SecretStr(infra.url), socket_timeout_s=1.0))
    assert isinstance(client, RedisCluster)
    await client.initialize()
    return client


def _ids(n: int) -> list[str]:
    base = uuid4().hex[:8]
    return [f"{base}-{i}" for i in range(n)]


def _manager(client: RedisCluster, **kwargs: Any) -> DeduplicationManager:
    return DeduplicationManager(client, "svc", consumer_group="grp", **kwargs)  # type: ignore[arg-type]


async def test_manager_claims_complete_and_release_across_every_master(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    try:
        first, second = _manager(client), _manager(client)
        ids = _ids(500)
        store = first._store
        assert isinstance(store, ClusterDedupStore)
        nodes = Counter(client.get_node_from_key(first.key_for(i)).port for i in ids)
        assert len(nodes) == 3, nodes  # one batch spreads over all three masters
        for shard in range(store.shards):
            keys = [first.key_for(i) for i in ids if store.shard_of(i) == shard]
            assert len({client.keyslot(k) for k in keys}) <= 1  # one slot per shard

        claimed = await first.claim_batch(ids, partition="t:0", generation=1)
        assert {r for r, _ in claimed} == {ClaimResult.CLAIMED}
        assert (
            await second.claim_batch(ids[:5], partition="t:0", generation=1)
            == [(ClaimResult.IN_PROGRESS, None)] * 5
        )
        assert [r for r, _ in await first.claim_batch(ids[:3], partition="t:0")] == [
            ClaimResult.HELD_HERE
        ] * 3

        await first.mark_done_many(ids[:200])
        seen = await second.claim_batch(ids, partition="t:0", generation=1)
        assert {r for r, _ in seen[:200]} == {ClaimResult.DUPLICATE}
        assert {r for r, _ in seen[200:]} == {ClaimResult.IN_PROGRESS}

        held = [(i, t) for i, (_, t) in zip(ids[190:210], claimed[190:210], strict=True)]
        assert held[0][1] is not None
        assert await first.renew(held) == [False] * 10 + [True] * 10  # done ones are not ours
        await first.release_claims([(i, t) for i, (_, t) in zip(ids, claimed, strict=True)])
        after = await second.claim_batch(ids, partition="t:0", generation=1)
        assert {r for r, _ in after[:200]} == {ClaimResult.DUPLICATE}  # done kept
        assert {r for r, _ in after[200:]} == {ClaimResult.CLAIMED}  # released ones free
        assert await second.is_duplicate(ids[0]) and not await second.is_duplicate(ids[300])
    finally:
        await client.aclose()


async def test_a_new_owner_of_the_partition_takes_over_an_older_generations_claims(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    try:
        old, new = _manager(client), _manager(client)
        ids = _ids(60)
        await old.claim_batch(ids, partition="t:3", generation=4)
        taken = await new.claim_batch(ids, partition="t:3", generation=5)
        assert {r for r, _ in taken} == {ClaimResult.CLAIMED} and new.taken_over == 60
        other = await new.claim_batch(_ids(1), partition="t:4", generation=5)
        assert other[0][0] is ClaimResult.CLAIMED
    finally:
        await client.aclose()


async def test_racing_members_never_both_claim_an_id(redis_cluster: RedisClusterInfra) -> None:
    clients = [await _client(redis_cluster) for _ in range(4)]
    try:
        managers = [_manager(c) for c in clients]
        ids = _ids(300)
        results = await asyncio.gather(
            *(m.claim_batch(ids, partition="t:0", generation=2) for m in managers)
        )
        winners = Counter(
            i for r in results for i, (flag, _) in zip(ids, r, strict=True) if flag == "claimed"
        )
        assert set(winners) == set(ids) and set(winners.values()) == {1}
    finally:
        for c in clients:
            await c.aclose()


async def _node(port: int) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(host="127.0.0.1", port=port)


async def _claim(store: ClusterDedupStore, ids: list[str], member: str) -> str:
    flags, _ = await store.claim(
        ids,
        claim_ms=60_000,
        token_base=f"p|{member}|t:0|1|",
        first_token=0,
        member=member,
        partition="t:0",
        generation=1,
    )
    return flags


async def test_slot_migration_is_followed_through_ask_and_moved(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    store = ClusterDedupStore(client, "migrate", uuid4().hex[:6], shards=4)
    ids = [i for i in _ids(60) if store.shard_of(i) == 0]
    new_ids = [i for i in (f"new-{n}" for n in range(300)) if store.shard_of(i) == 0][:5]
    slot = client.keyslot(store.key_for(ids[0]))
    source_port = client.get_node_from_key(store.key_for(ids[0])).port
    masters = {n.port for n in client.get_primaries()}
    target_port = min(masters - {source_port})
    source, target = await _node(source_port), await _node(target_port)
    try:
        assert await _claim(store, ids, "a") == "C" * len(ids)
        await store.done(ids[:3], 60_000)
        source_id = (await source.execute_command("CLUSTER", "MYID")).decode()
        target_id = (await target.execute_command("CLUSTER", "MYID")).decode()
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

        # A key not on the source is asked of the target (ASK): a new id is claimed there.
        assert await _claim(store, new_ids[:1], "a") == "C"
        assert await target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1

        # Several keys of a slot being migrated are refused (TRYAGAIN) rather than claimed
        # on one node while a record sits on the other: the store reports it unavailable.
        for batch in ([ids[0], new_ids[1]], new_ids[1:]):
            with pytest.raises(ClusterStoreUnavailable):
                await _claim(store, batch, "b")

        keys = await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        await source.execute_command(
            "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys
        )
        for port in masters:
            node = await _node(port)
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            await node.aclose()
        # The client's slot map is stale now: MOVED sends it to the target, records intact.
        flags = await _claim(store, ids + new_ids, "b")
        assert flags == "DDD" + "P" * (len(ids) - 3) + "P" + "C" * (len(new_ids) - 1)
        assert client.get_node_from_key(store.key_for(ids[0])).port == target_port
    finally:
        await source.aclose()
        await target.aclose()
        await client.aclose()


async def test_master_failover_is_survived_and_done_marks_kept(
    redis_cluster: RedisClusterInfra,
) -> None:
    client = await _client(redis_cluster)
    dedup = _manager(client, failure_policy="fail_closed")
    ids = _ids(200)
    victim_no = 0
    try:
        await dedup.claim_batch(ids, partition="t:0", generation=1)
        await dedup.mark_done_many(ids)
        victim_port = client.get_node_from_key(dedup.key_for(ids[0])).port
        victim = await _node(victim_port)
        await victim.execute_command("WAIT", 1, 2000)  # replicated before the crash
        await victim.aclose()
        victim_no = redis_cluster.ports.index(victim_port) + 1

        reader = _manager(client, failure_policy="fail_closed")  # no local cache
        began = time.monotonic()
        kill = asyncio.ensure_future(redis_cluster.arun("kill", str(victim_no)))
        unavailable = 0
        while True:
            try:
                results = await reader.claim_batch(ids, partition="t:0", generation=1)
                if kill.done():
                    break
            except Exception as exc:  # DedupUnavailableError under fail_closed
                assert "unavailable" in type(exc).__name__.lower() or "Unavailable" in str(exc)
                unavailable += 1
            reader._local.clear()
            await asyncio.sleep(0.2)
        await kill
        assert {r for r, _ in results} == {ClaimResult.DUPLICATE}
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
        await wait_until(lambda: len(handled) >= 30, 30, "all handled")
        layer = service.flows[0].layer
        deadline = time.monotonic() + 30
        while _duplicates(layer) < 2:
            assert time.monotonic() < deadline, "duplicates not skipped"
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert sorted(handled) == list(range(30))
    client = await _client(redis_cluster)
    try:
        keys = [k async for k in client.scan_iter(match=f"dedup:{{{unique_name}:*", count=1000)]
        assert len(keys) == 30
    finally:
        await client.aclose()


def _duplicates(layer: Any) -> int:
    outcomes = getattr(layer, "outcomes", {})
    return int(outcomes.get("duplicate", 0))
