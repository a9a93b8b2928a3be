"""Dedup claims, done marks, renewals and releases on a Redis Cluster.

A cluster runs a script only over keys of one hash slot, so the single-node
scripts (which build any key they like) cannot run there. Here every dedup key
carries a hash tag naming one of ``shards`` shards of its service and group:

    dedup:{<service>:<group>:<shard>}:<event id>     shard = crc32(id) % shards

so the ids of a batch fall into at most ``shards`` slot groups. Each group is
one script call over its keys, and the calls for all groups go out in one
cluster pipeline: one round trip per master, in parallel.
redis-py's cluster client follows MOVED/ASK and, after a master fails over,
refreshes its slot map and retries. While a slot migrates, Redis refuses a call
over several of its keys split between the two nodes (TRYAGAIN) until the move
completes, so no claim misses a record still on the other node. Anything that
still fails (no master for a slot yet, a node down, a replica answering
READONLY, a slot mid-migration) is raised as
:class:`ClusterStoreUnavailable`, a ``redis`` ``ConnectionError``, so callers
apply their dedup failure policy to it like to any unreachable Redis.

Moving a deployment between one node and a cluster starts with an empty dedup
history: the key layouts differ.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from core.config.settings import RedisSettings

DONE = "done"

# Every script takes the keys of one slot group as KEYS, so Redis checks they are
# all served here: during a slot migration a group split between two nodes gets
# TRYAGAIN (retried, then reported unavailable) instead of a claim that misses a
# record still on the other node.

# ARGV: claim value, claim ms. Returns {flags: C claimed, D done, P in progress; pttl of each D}.
_CLAIM = """
local flags, ttls = {}, {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    flags[i] = 'C'
  elseif redis.call('GET', key) == 'done' then
    flags[i] = 'D'
    ttls[#ttls + 1] = redis.call('PTTL', key)
  else
    flags[i] = 'P'
  end
end
return {table.concat(flags), ttls}
"""

# ARGV: record ms.
_DONE = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, 'done', 'PX', ARGV[1])
end
return #KEYS
"""

# ARGV: claim value, claim ms. One flag per key: 1 renewed, 0 not ours.
_REFRESH = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
"""

# ARGV: claim value. Deletes only keys still holding it; never a done record.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""

# Returns {value or false, pttl} of KEYS[1].
_PEEK = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"

#: Errors meaning "the cluster cannot answer this now" (besides connection errors).
_CLUSTER_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.BusyLoadingError,
    redis_errors.SlotNotCoveredError,
    redis_errors.RedisClusterException,
    OSError,
)


class ClusterStoreUnavailable(redis_errors.ConnectionError):
    """The Redis Cluster could not serve a dedup call now; apply the failure policy."""


@dataclass(frozen=True)
class ClaimReply:
    """What a claim found for one id: ``C`` claimed, ``D`` done (``pttl`` ms left), ``P``."""

    flag: str
    pttl: int = 0


def cluster_client(settings: RedisSettings) -> RedisCluster:
    """A ``RedisCluster`` client for the settings' seed URL (``+cluster`` scheme removed)."""
    client: RedisCluster = RedisCluster.from_url(
        settings.client_url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        **settings.tls_kwargs(),
    )
    return client


def _tag(text: str) -> str:
    """``text`` without braces, which would end the hash tag early."""
    return text.replace("{", "(").replace("}", ")")


class ClusterDedupStore:
    """The dedup round trips of one service and consumer group, on a Redis Cluster."""

    def __init__(
        self, client: RedisCluster, service_name: str, consumer_group: str, *, shards: int = 32
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.client = client
        self.shards = shards
        base = f"{_tag(service_name)}:{_tag(consumer_group)}"
        self._prefixes = [f"dedup:{{{base}:{s}}}:" for s in range(shards)]
        self._sha: dict[str, str] = {}

    def key_for(self, event_id: str) -> str:
        """The Redis key of ``event_id``."""
        return self._prefixes[self.shard_of(event_id)] + event_id

    def shard_of(self, event_id: str) -> int:
        return zlib.crc32(event_id.encode()) % self.shards

    def _groups(self, event_ids: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for event_id in event_ids:
            if not event_id or "\n" in event_id:
                raise ValueError("dedup ids must be non-empty and without newlines")
            groups[self.shard_of(event_id)].append(event_id)
        return groups

    async def _run(self, script: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One EVALSHA per (keys, args), pipelined; scripts loaded when missing."""
        try:
            if script not in self._sha:
                self._sha[script] = str(await self.client.script_load(script))
            results = await self._pipeline(self._sha[script], calls)
            missing = [
                i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)
            ]
            if missing:
                # A new master (after a failover or restart) has an empty script cache.
                self._sha[script] = str(await self.client.script_load(script))
                again = await self._pipeline(self._sha[script], [calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except _CLUSTER_TRANSIENT as exc:
            raise ClusterStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        for result in results:
            if isinstance(result, _CLUSTER_TRANSIENT):
                raise ClusterStoreUnavailable(f"{type(result).__name__}: {result}") from result
            if isinstance(result, BaseException):
                raise result
        return results

    async def _pipeline(self, sha: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        pipe = self.client.pipeline()
        for keys, args in calls:
            # redis-py blocks pipe.evalsha() on clusters (keys could span slots); the keys
            # of one call share a slot, so the raw command is routed by them.
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    # ------------------------------------------------------------------ operations

    def _calls(self, groups: dict[int, list[str]], *args: Any) -> list[tuple[list[str], list[Any]]]:
        return [([self._prefixes[s] + i for i in ids], list(args)) for s, ids in groups.items()]

    async def claim(
        self, event_ids: Sequence[str], owner: str, claim_ms: int
    ) -> dict[str, ClaimReply]:
        """Claim each id (``SET NX PX``) or say what holds it; one reply per distinct id."""
        groups = self._groups(dict.fromkeys(event_ids))
        replies = await self._run(_CLAIM, self._calls(groups, owner, claim_ms))
        out: dict[str, ClaimReply] = {}
        for ids, (flags, ttls) in zip(groups.values(), replies, strict=True):
            text = flags.decode() if isinstance(flags, bytes) else str(flags)
            remaining = iter(ttls)
            for event_id, flag in zip(ids, text, strict=True):
                out[event_id] = ClaimReply(flag, int(next(remaining)) if flag == "D" else 0)
        return out

    async def mark_done(self, event_ids: Sequence[str], ttl_ms: int) -> None:
        """Record each id as handled for ``ttl_ms``."""
        await self._run(_DONE, self._calls(self._groups(event_ids), ttl_ms))

    async def refresh(self, event_ids: Sequence[str], owner: str, claim_ms: int) -> dict[str, bool]:
        """Extend the claims still held by ``owner``; False for ids no longer ours."""
        groups = self._groups(dict.fromkeys(event_ids))
        replies = await self._run(_REFRESH, self._calls(groups, owner, claim_ms))
        out: dict[str, bool] = {}
        for ids, flags in zip(groups.values(), replies, strict=True):
            text = flags.decode() if isinstance(flags, bytes) else str(flags)
            out.update((event_id, flag == "1") for event_id, flag in zip(ids, text, strict=True))
        return out

    async def release(self, event_ids: Sequence[str], owner: str) -> int:
        """Delete the claims still held by ``owner``; never a done record. Returns the count."""
        replies = await self._run(_RELEASE, self._calls(self._groups(event_ids), owner))
        return sum(int(r) for r in replies)

    async def peek(self, event_id: str) -> tuple[str | None, int]:
        """The id's record (``done``, a claim value or None) and its remaining ms."""
        value, pttl = (await self._run(_PEEK, [([self.key_for(event_id)], [])]))[0]
        text = value.decode() if isinstance(value, bytes) else value
        return (text or None), int(pttl)
