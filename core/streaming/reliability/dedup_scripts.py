"""The dedup store's vocabulary: key prefixes, claim outcomes and Lua scripts.

Used by :mod:`core.streaming.reliability.dedup_store`, which runs the scripts,
and :mod:`core.streaming.reliability.dedup_keys`; kept apart so the store holds
the behaviour only. The scripts' argument layout is documented next to each.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import orjson

from core.streaming.errors import RetryableError

DONE = "done"
CLAIM_PREFIX = "p|"
KEY_PREFIX = "dedup"
DEFAULT_GROUP = "default"
#: Ids longer than this are hashed in keys.
MAX_ID_LENGTH = 200
#: Seconds between two "Redis unreachable" warnings of one manager.
WARN_INTERVAL_S = 10.0

#: Ids per claim script call: Lua unpacks them onto its stack in one step.
_SCRIPT_IDS = 1000
#: Ids per done-mark script call (unpacked 1,000 at a time inside the script):
#: fewer round trips, each blocking Redis for a few milliseconds at most.
_DONE_CALL_IDS = 5000

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)"

# KEYS: claims hash, done set of this bucket, of the previous one. ARGV: 1 claim ms,
# 2 token base "p|member|tp|gen|", 3 the call's token number (ids of one call are
# distinct, so they share a token), 4 member, 5 topic:partition, 6 generation, 7 the
# ids as a JSON array (one argument: far cheaper for the client to send than one per
# id, and cjson splits it faster than a Lua pattern), 8 the token numbers of this
# member's claim calls that failed on the client ("n,n,...", usually empty): their
# claims may have been made after all, and nobody here holds them. One flag per id:
# C claimed, T taken over from an older generation's owner of this partition, R taken
# back from a failed call of this member, D done, H held by this member, P held elsewhere.
_CLAIM_SCRIPT = (
    _NOW_MS
    + """
local ids = cjson.decode(ARGV[7])
local done1 = redis.call('SMISMEMBER', KEYS[2], unpack(ids))
local done2 = redis.call('SMISMEMBER', KEYS[3], unpack(ids))
local held = redis.call('HMGET', KEYS[1], unpack(ids))
local member, tp = ARGV[4], ARGV[5]
local gen = tonumber(ARGV[6])
local claim = (now + tonumber(ARGV[1])) .. '|' .. ARGV[2] .. ARGV[3]
local failed = {}
for n in string.gmatch(ARGV[8], '%d+') do failed[n] = true end
local flags, fields, nf = {}, {}, 0
for i = 1, #ids do
  local flag = 'C'
  if done1[i] == 1 or done2[i] == 1 then
    flag = 'D'
  elseif held[i] then
    local until_ms, m, ctp, cgen, n = string.match(
      held[i], '^(%d+)|p|([^|]*)|([^|]*)|([^|]*)|(%d*)$')
    if until_ms and tonumber(until_ms) > now then
      if m == member and failed[n] then
        flag = 'R'
      elseif m == member then
        flag = 'H'
      elseif ctp == tp and gen >= 0 and (tonumber(cgen) or 0) < gen then
        flag = 'T'
      else
        flag = 'P'
      end
    end
  end
  if flag == 'C' or flag == 'T' or flag == 'R' then
    fields[nf + 1] = ids[i]
    fields[nf + 2] = claim
    nf = nf + 2
  end
  flags[i] = flag
end
if nf > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], 4 * tonumber(ARGV[1]))
end
return table.concat(flags)
"""
)

# KEYS[1]: claims hash. ARGV: 1 claim ms (0: release), 2 lines "id<TAB>token". Renews (or
# deletes) each claim still holding its token; one 1/0 flag per line.
_HELD_SCRIPT = (
    _NOW_MS
    + """
local flags = {}
local ms = tonumber(ARGV[1])
for id, token in string.gmatch(ARGV[2], '([^\\t\\n]+)\\t([^\\n]+)') do
  local cur = redis.call('HGET', KEYS[1], id)
  if cur and string.match(cur, '^%d+|(.*)$') == token then
    if ms == 0 then
      redis.call('HDEL', KEYS[1], id)
    else
      redis.call('HSET', KEYS[1], id, (now + ms) .. '|' .. token)
    end
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
if ms > 0 then
  redis.call('PEXPIRE', KEYS[1], 4 * ms)
end
return table.concat(flags)
"""
)

# KEYS: claims hash, done set of this bucket. ARGV: 1 how long the set is kept (ms),
# 2 the ids as a JSON array. Marks them done and drops their claims.
_DONE_SCRIPT = """
local ids = cjson.decode(ARGV[2])
local n = #ids
for i = 1, n, 1000 do
  local j = math.min(i + 999, n)
  redis.call('SADD', KEYS[2], unpack(ids, i, j))
  redis.call('HDEL', KEYS[1], unpack(ids, i, j))
end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return n
"""

# KEYS[1]: claims hash. ARGV[1]: one id. Returns {the claim or false, ms left}.
_PEEK_CLAIM_SCRIPT = (
    _NOW_MS
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {false, 0} end
local until_ms, token = string.match(cur, '^(%d+)|(.*)$')
return {token, tonumber(until_ms) - now}
"""
)


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


class DedupUnavailableError(RetryableError):
    """Redis is unreachable (or erroring) and the policy is ``fail_closed``."""


def id_array(event_ids: list[str]) -> bytes:
    """The ids as one JSON-array script argument, each in its :func:`key_id` form.

    The usual batch (short ids, nothing JSON must escape) is encoded as it is in
    one C-level call; a batch holding a long id or an escaped character is mapped
    id by id.
    """
    if event_ids and max(map(len, event_ids)) <= MAX_ID_LENGTH:
        try:
            encoded: bytes | None = orjson.dumps(event_ids)
        except orjson.JSONEncodeError:  # a lone surrogate: key_id hashes it
            encoded = None
        if encoded is not None and b"\\" not in encoded:  # nothing escaped: no separators
            return encoded
    return orjson.dumps([key_id(e) for e in event_ids])


def key_id(event_id: str) -> str:
    """The form of ``event_id`` used in keys: itself, or its hash when long or odd.

    Odd: holding a separator of the scripts' arguments, or not encodable as UTF-8.
    """
    if len(event_id) > MAX_ID_LENGTH or "\n" in event_id or "\t" in event_id:
        return _hashed(event_id)
    if not event_id.isascii():
        try:
            event_id.encode("utf-8")
        except UnicodeEncodeError:
            return _hashed(event_id)
    return event_id


def _hashed(event_id: str) -> str:
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
