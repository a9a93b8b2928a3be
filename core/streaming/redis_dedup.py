"""Where dedup records live: one Redis node, or a Redis Cluster.

``DeduplicationManager`` decides what a claim means; a store only runs its
round trips. Both stores keep a record per key id (``done``, or a claim token
``p|member|topic:partition|generation|n``) with the same scripts' logic:

- :class:`SingleNodeDedupStore`: each operation is one script call over the whole
  batch, the ids packed in one argument and the keys built inside the script
  (half the cost of one argument per key). A script may only do that on one node.
- :class:`ClusterDedupStore`: on a Redis Cluster a script runs over keys of one
  hash slot, so each key carries a hash tag naming one of ``shards`` shards of
  its service and group (``dedup:{<service>:<group>:<shard>}:<id>``, shard =
  crc32(id) % shards). A batch is split by shard; each shard is one script call
  that declares its keys, and all calls go out in one cluster pipeline: one round
  trip per master, in parallel. redis-py's cluster client follows MOVED and ASK
  and, after a master fails over, refreshes its slot map and retries. Declaring
  the keys lets Redis refuse (TRYAGAIN) a call over a slot that is migrating with
  its keys split between two nodes, instead of claiming on one node while a
  record sits on the other. What still fails is raised as
  :class:`ClusterStoreUnavailable` (a ``redis`` ``ConnectionError``), so the
  manager applies its failure policy.

Moving between one node and a cluster starts with an empty dedup history: the
key layouts differ.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as redis_asyncio
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from core.config.settings import RedisSettings

#: A client a dedup store runs on.
RedisClient = redis_asyncio.Redis | RedisCluster

# --------------------------------------------------------------------------- scripts

# ARGV: 1 claim ms, 2 key prefix, 3 token base "p|member|tp|gen|", 4 first token number,
# 5 member, 6 topic:partition, 7 generation, 8 newline-separated ids.
# Returns {flags, remaining ms of each D}: C claimed, T taken over from an older
# generation's owner of this partition, D done, H held by this member, P held elsewhere.
_CLAIM_PACKED = """
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
_DONE_PACKED = """
local n = 0
for id in string.gmatch(ARGV[3], '[^\\n]+') do
  redis.call('SET', ARGV[2] .. id, 'done', 'PX', ARGV[1])
  n = n + 1
end
return n
"""

# ARGV: 1 claim ms (0: delete instead), 2 key prefix, 3 lines "id<TAB>token".
# Renews (or deletes) each claim still holding its token; returns one 1/0 flag per line.
_HELD_PACKED = """
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
_PEEK = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"

# The cluster forms take the keys of one shard as KEYS, in order.
# ARGV: 1 claim ms, 2 token base, 3 newline-separated token numbers (one per key),
# 4 member, 5 topic:partition, 6 generation. Returns {flags, pttl of each D}.
_CLAIM_KEYS = """
local base, member, tp, gen = ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[6])
local numbers, flags, ttls = {}, {}, {}
for n in string.gmatch(ARGV[3], '[^\\n]+') do numbers[#numbers + 1] = n end
for i, key in ipairs(KEYS) do
  local token = base .. numbers[i]
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[1]) then
    flags[i] = 'C'
  else
    local cur = redis.call('GET', key)
    if cur == 'done' then
      flags[i] = 'D'
      ttls[#ttls + 1] = redis.call('PTTL', key)
    else
      local m, ctp, cgen = string.match(cur or '', '^p|([^|]*)|([^|]*)|([^|]*)|')
      if m == member then
        flags[i] = 'H'
      elseif m and ctp == tp and gen >= 0 and (tonumber(cgen) or 0) < gen then
        redis.call('SET', key, token, 'PX', ARGV[1])
        flags[i] = 'T'
      else
        flags[i] = 'P'
      end
    end
  end
end
return {table.concat(flags), ttls}
"""

# ARGV: 1 record lifetime ms.
_DONE_KEYS = """
for _, key in ipairs(KEYS) do redis.call('SET', key, 'done', 'PX', ARGV[1]) end
return #KEYS
"""

# ARGV: 1 claim ms (0: delete instead), 2 newline-separated tokens (one per key).
_HELD_KEYS = """
local tokens, flags = {}, {}
for t in string.gmatch(ARGV[2], '[^\\n]+') do tokens[#tokens + 1] = t end
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == tokens[i] then
    if ARGV[1] == '0' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[1]) end
    flags[i] = '1'
  else
    flags[i] = '0'
  end
end
return table.concat(flags)
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DedupStore(Protocol):
    """The dedup round trips; ids are key ids (already hashed when long or odd)."""

    def key_for(self, key_id: str) -> str: ...

    async def claim(
        self,
        key_ids: Sequence[str],
        *,
        claim_ms: int,
        token_base: str,
        first_token: int,
        member: str,
        partition: str,
        generation: int,
    ) -> tuple[str, list[int]]:
        """One flag per id (``C``/``T``/``D``/``H``/``P``) and the remaining ms of each D."""
        ...

    async def done(self, key_ids: Sequence[str], ttl_ms: int) -> None: ...

    async def held(self, claims: Sequence[tuple[str, str]], ms: int) -> str:
        """Renew (``ms`` > 0) or delete (0) claims still holding their token; 1/0 each."""
        ...

    async def peek(self, key_id: str) -> tuple[Any, int]: ...


class SingleNodeDedupStore:
    """Dedup records on one Redis node: one packed script call per operation."""

    def __init__(self, client: Any, key_prefix: str) -> None:
        self._prefix = key_prefix
        self._claim = client.register_script(_CLAIM_PACKED)
        self._done = client.register_script(_DONE_PACKED)
        self._held = client.register_script(_HELD_PACKED)
        self._peek = client.register_script(_PEEK)

    def key_for(self, key_id: str) -> str:
        return self._prefix + key_id

    async def claim(
        self,
        key_ids: Sequence[str],
        *,
        claim_ms: int,
        token_base: str,
        first_token: int,
        member: str,
        partition: str,
        generation: int,
    ) -> tuple[str, list[int]]:
        flags, ttls = await self._claim(
            keys=[],
            args=[
                claim_ms,
                self._prefix,
                token_base,
                first_token,
                member,
                partition,
                generation,
                "\n".join(key_ids),
            ],
        )
        return _text(flags), [int(t) for t in ttls]

    async def done(self, key_ids: Sequence[str], ttl_ms: int) -> None:
        await self._done(keys=[], args=[ttl_ms, self._prefix, "\n".join(key_ids)])

    async def held(self, claims: Sequence[tuple[str, str]], ms: int) -> str:
        packed = "\n".join(f"{key_id}\t{token}" for key_id, token in claims)
        return _text(await self._held(keys=[], args=[ms, self._prefix, packed]))

    async def peek(self, key_id: str) -> tuple[Any, int]:
        value, pttl = await self._peek(keys=[self.key_for(key_id)], args=[])
        return value, int(pttl)


#: What a cluster answers when it cannot serve a call now (besides connection errors).
_CLUSTER_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.RedisClusterException,
    OSError,
)


class ClusterStoreUnavailable(redis_errors.ConnectionError):
    """The Redis Cluster could not serve a dedup call now; apply the failure policy."""


def _tag(text: str) -> str:
    """``text`` without braces, which would end the hash tag early."""
    return text.replace("{", "(").replace("}", ")")


class ClusterDedupStore:
    """Dedup records on a Redis Cluster: per-shard script calls, pipelined per master."""

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

    def shard_of(self, key_id: str) -> int:
        return zlib.crc32(key_id.encode("utf-8", "surrogatepass")) % self.shards

    def key_for(self, key_id: str) -> str:
        return self._prefixes[self.shard_of(key_id)] + key_id

    def _groups(self, key_ids: Sequence[str]) -> dict[int, list[int]]:
        """Shard -> positions of its ids in ``key_ids``, in order."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, key_id in enumerate(key_ids):
            groups[self.shard_of(key_id)].append(i)
        return groups

    async def _run(self, script: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One EVALSHA per (keys, args), pipelined; scripts (re)loaded when missing."""
        try:
            if script not in self._sha:
                self._sha[script] = str(await self.client.script_load(script))
            results = await self._pipeline(self._sha[script], calls)
            missing = [
                i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)
            ]
            if missing:
                # A new master (after a failover or a restart) has an empty script cache.
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

    async def claim(
        self,
        key_ids: Sequence[str],
        *,
        claim_ms: int,
        token_base: str,
        first_token: int,
        member: str,
        partition: str,
        generation: int,
    ) -> tuple[str, list[int]]:
        groups = self._groups(key_ids)
        calls = [
            (
                [self._prefixes[s] + key_ids[i] for i in positions],
                [
                    claim_ms,
                    token_base,
                    "\n".join(str(first_token + i) for i in positions),
                    member,
                    partition,
                    generation,
                ],
            )
            for s, positions in groups.items()
        ]
        flags = [""] * len(key_ids)
        pttl = [0] * len(key_ids)
        for positions, (group_flags, ttls) in zip(
            groups.values(), await self._run(_CLAIM_KEYS, calls), strict=True
        ):
            remaining = iter(ttls)
            for i, flag in zip(positions, _text(group_flags), strict=True):
                flags[i] = flag
                if flag == "D":
                    pttl[i] = int(next(remaining))
        return "".join(flags), [pttl[i] for i, f in enumerate(flags) if f == "D"]

    async def done(self, key_ids: Sequence[str], ttl_ms: int) -> None:
        groups = self._groups(key_ids)
        await self._run(
            _DONE_KEYS,
            [
                ([self._prefixes[s] + key_ids[i] for i in positions], [ttl_ms])
                for s, positions in groups.items()
            ],
        )

    async def held(self, claims: Sequence[tuple[str, str]], ms: int) -> str:
        groups = self._groups([key_id for key_id, _ in claims])
        calls = [
            (
                [self._prefixes[s] + claims[i][0] for i in positions],
                [ms, "\n".join(claims[i][1] for i in positions)],
            )
            for s, positions in groups.items()
        ]
        flags = [""] * len(claims)
        for positions, group_flags in zip(
            groups.values(), await self._run(_HELD_KEYS, calls), strict=True
        ):
            for i, flag in zip(positions, _text(group_flags), strict=True):
                flags[i] = flag
        return "".join(flags)

    async def peek(self, key_id: str) -> tuple[Any, int]:
        value, pttl = (await self._run(_PEEK, [([self.key_for(key_id)], [])]))[0]
        return value, int(pttl)


def cluster_client(settings: RedisSettings) -> RedisCluster:
    """A ``RedisCluster`` client for the settings' seed URL, timeouts and TLS files."""
    client: RedisCluster = RedisCluster.from_url(
        settings.client_url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        **settings.tls_kwargs(),
    )
    return client


def dedup_store_for(client: Any, service_name: str, consumer_group: str) -> DedupStore:
    """The store for ``client``: a cluster store for a ``RedisCluster``, else one node."""
    if isinstance(client, RedisCluster):
        return ClusterDedupStore(client, service_name, consumer_group)
    return SingleNodeDedupStore(client, f"dedup:{service_name}:{consumer_group}:")
