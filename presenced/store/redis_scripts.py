"""Lua scripts of the Redis store, and the key layout they share.

Everything that must be atomic across instances is one script: a flushed
batch (its writes, its ownership checks and its one change message), an
expiry claim, a friendship batch, a block batch and an instance's retirement. Each script
that publishes takes the next sequence number of its instance (`HINCRBY seq`)
in the same atomic step, so receivers can tell a lost message from a late one.

All keys share the hash tag `{presenced}` (or the configured prefix), so in a
Redis Cluster they live in one slot and the scripts stay legal. See
docs/redis.md for what each key holds and who writes it.

Times: users' last-seen scores are the instances' wall clock (the engine's
milliseconds); instance liveness uses Redis's own clock (`TIME`) so that no
two instances' clocks are compared with each other for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Shared by every script; `P` is ARGV[1], the key prefix.
_PRELUDE = """
local P = ARGV[1]
local function key(s) return P .. ':' .. s end
local function entry(kind, addr, payload)
  return kind .. struct.pack('<H', #addr) .. addr .. struct.pack('<H', #payload) .. payload
end
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function current_epoch(candidate)
  local e = redis.call('GET', key('epoch'))
  if not e then
    -- Redis lost everything (or this is the first instance ever): a new
    -- epoch tells every instance to resynchronise.
    e = candidate
    redis.call('SET', key('epoch'), e)
  end
  return e
end
-- The message is numbered in any case (snapshots carry the counters), but
-- sent only if someone besides our own listener is subscribed: that listener
-- also holds the channel events:<me>, so the difference of the two counts is
-- everyone else. A listener that subscribes later reads a snapshot after its
-- subscription is confirmed, and this script runs before or after that
-- subscription as a whole, so no change is lost between the two.
local function listeners_besides(me)
  local n = redis.call('PUBSUB', 'NUMSUB', key('events'), key('events:' .. me))
  return n[2] - n[4]
end
-- `others`: listeners_besides(me) if the caller has it already.
local function publish(me, epoch, entries, others)
  if #entries == 0 then return 0 end
  local seq = redis.call('HINCRBY', key('seq'), me, 1)
  if (others or listeners_besides(me)) > 0 then
    redis.call('PUBLISH', key('events'),
               'P1|' .. me .. '|' .. epoch .. '|' .. seq .. '\\n' .. table.concat(entries))
  end
  return seq
end
local function alive_others(me, tnow, dead_after)
  local out = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key('alive'), tnow - dead_after, '+inf')) do
    if m ~= me then out[#out + 1] = m end
  end
  return out
end
local function blocked_either_way(a, b)
  return redis.call('SISMEMBER', key('b:' .. a), b) == 1
      or redis.call('SISMEMBER', key('b:' .. b), a) == 1
end
-- A friendship entry names the pair in order (a < b), as events do.
local function pair_entry(kind, a, b)
  if b < a then a, b = b, a end
  return entry(kind, a, b)
end
local function beacon(me, tnow)
  redis.call('ZADD', key('alive'), tnow, me)
  redis.call('SADD', key('members'), me)
end
"""

# ARGV: prefix, me, epoch candidate, dead_after_ms, transitions ('1': report
# them, '0'), then groups of four: kind ('W' changed write, 'w' refresh, 'L'
# leave), address, last_seen_ms, blob.
# Returns {epoch, orphaned, seq, online, offline, listeners}: `orphaned` are users we
# made offline whose entries from dead instances we removed (our own engine
# may still count those instances as owners); `seq` is the number of the
# message published (0 if none); with transitions, `online` are the users
# this batch made online anywhere and `offline` those it made offline
# everywhere (each transition is seen by exactly one script run); `listeners`
# is how many subscribers of the change channel are not our own listener.
FLUSH = _PRELUDE + """
local me = ARGV[2]
local tnow = redis_now()
local epoch = current_epoch(ARGV[3])
local dead_after = tonumber(ARGV[4])
local transitions = ARGV[5] == '1'
beacon(me, tnow)
local own = key('own:' .. me)
local seen, state = key('seen'), key('state')
local others, members = nil, nil
local entries, orphaned, online, offline = {}, {}, {}, {}
local waddr, wms, wblob, wchanged = {}, {}, {}, {}
for i = 6, #ARGV, 4 do
  local kind, addr, ms, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if kind == 'L' then
    local was = redis.call('ZREM', own, addr)
    if not others then others = alive_others(me, tnow, dead_after) end
    local best = false
    for _, o in ipairs(others) do
      local s = redis.call('ZSCORE', key('own:' .. o), addr)
      if s then
        s = tonumber(s)
        if not best or s > best then best = s end
      end
    end
    if best then
      -- Someone else still vouches: the shared last-seen becomes theirs.
      redis.call('ZADD', seen, 'XX', best, addr)
      if was == 1 then entries[#entries + 1] = entry('L', addr, '') end
    else
      local had = redis.call('ZREM', seen, addr)
      redis.call('HDEL', state, addr)
      if not members then members = redis.call('SMEMBERS', key('members')) end
      local stale = false
      for _, m in ipairs(members) do
        if m ~= me and redis.call('ZREM', key('own:' .. m), addr) == 1 then stale = true end
      end
      if stale then orphaned[#orphaned + 1] = addr end
      if was == 1 or had == 1 then entries[#entries + 1] = entry('G', addr, '') end
      if transitions and had == 1 then offline[#offline + 1] = addr end
    end
  else
    local n = #waddr + 1
    waddr[n], wms[n], wblob[n], wchanged[n] = addr, ms, blob, kind == 'W'
  end
end
if #waddr > 0 then
  -- Writes are most of the traffic: a few variadic commands for the whole
  -- batch (each address appears once in a batch) instead of three per user.
  local before = redis.call('ZMSCORE', own, unpack(waddr))
  if transitions then
    -- Not in `seen`: nobody vouched for them, this batch makes them online.
    local anywhere = redis.call('ZMSCORE', seen, unpack(waddr))
    for j = 1, #waddr do
      if not anywhere[j] then online[#online + 1] = waddr[j] end
    end
  end
  local scored, fields = {}, {}
  for j = 1, #waddr do
    scored[2 * j - 1], scored[2 * j] = wms[j], waddr[j]
    fields[2 * j - 1], fields[2 * j] = waddr[j], wblob[j]
  end
  redis.call('ZADD', own, unpack(scored))
  redis.call('ZADD', seen, 'GT', unpack(scored))
  redis.call('HSET', state, unpack(fields))
  for j = 1, #waddr do
    -- A new owner is news even without a change: others must count us, or
    -- they would take the user offline when the previous owner leaves.
    if wchanged[j] or not before[j] then
      entries[#entries + 1] = entry('P', waddr[j], wblob[j])
    end
  end
end
local others = listeners_besides(me)
local seq = publish(me, epoch, entries, others)
return {epoch, orphaned, seq, online, offline, others}
"""

# ARGV: prefix, me, epoch candidate, now_ms, ttl_ms, margin_ms, dead_after_ms,
# gc_after_ms, limit. Returns {epoch, claimed, candidates, seq}.
CLAIM = _PRELUDE + """
local me = ARGV[2]
local tnow = redis_now()
local epoch = current_epoch(ARGV[3])
local now, ttl, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local dead_after, gc_after, limit = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
beacon(me, tnow)
local cutoff = now - ttl
local seen, state = key('seen'), key('state')
local due = redis.call('ZRANGEBYSCORE', seen, '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, limit)
local claimed, entries = {}, {}
if #due > 0 then
  local members = redis.call('SMEMBERS', key('members'))
  local alive = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key('alive'), tnow - dead_after, '+inf')) do
    alive[m] = true
  end
  for i = 1, #due, 2 do
    local addr, score = due[i], tonumber(due[i + 1])
    -- A live owner expires its own users (its engine knows when they went
    -- silent, and writes users kept alive by pings less often than a short
    -- TTL); claiming them here as well would race with it and could
    -- announce the user offline twice. It gets `margin` more to do so.
    local held = false
    if score >= cutoff - margin then
      for _, m in ipairs(members) do
        if alive[m] and redis.call('ZSCORE', key('own:' .. m), addr) then
          held = true
          break
        end
      end
    end
    if not held then
      redis.call('ZREM', seen, addr)
      redis.call('HDEL', state, addr)
      for _, m in ipairs(members) do redis.call('ZREM', key('own:' .. m), addr) end
      claimed[#claimed + 1] = addr
      entries[#entries + 1] = entry('E', addr, '')
    end
  end
end
local seq = publish(me, epoch, entries)
-- Instances silent for long are gone: whatever they vouched for has expired
-- or is vouched for by someone else by now.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', key('alive'), '-inf', tnow - gc_after)) do
  redis.call('DEL', key('own:' .. m))
  redis.call('SREM', key('members'), m)
  redis.call('ZREM', key('alive'), m)
  redis.call('HDEL', key('seq'), m)
end
return {epoch, claimed, #due / 2, seq}
"""

# ARGV: prefix, me, epoch candidate, op ('+' or '-'), then pairs a, b.
# Returns {epoch, indexes (1-based) of the pairs that changed, seq, indexes of
# those whose *effective* friendship changed (no block either way)}. Only
# effective changes are published: instances cache effective friend sets.
FRIENDS = _PRELUDE + """
local me = ARGV[2]
local epoch = current_epoch(ARGV[3])
local add = ARGV[4] == '+'
local cmd = add and 'SADD' or 'SREM'
local entries, changed, effective = {}, {}, {}
for i = 5, #ARGV, 2 do
  local a, b = ARGV[i], ARGV[i + 1]
  if redis.call(cmd, key('f:' .. a), b) == 1 then
    redis.call(cmd, key('f:' .. b), a)
    local n = (i - 3) / 2
    changed[#changed + 1] = n
    if not blocked_either_way(a, b) then
      effective[#effective + 1] = n
      entries[#entries + 1] = pair_entry(add and 'F' or 'f', a, b)
    end
  end
end
local seq = publish(me, epoch, entries)
return {epoch, changed, seq, effective}
"""

# ARGV: prefix, me, epoch candidate, op ('+' or '-'), then pairs blocker,
# blocked. Returns {epoch, indexes (1-based) of the blocks that changed, seq,
# indexes of those that changed an effective friendship}: the first block
# between friends ends it, removing the last one restores it. Publishes the
# block (`K`/`k`) and, for those, the friendship (`f`/`F`), in the order the
# engine applies them: hidden before the block is announced, the block lifted
# before the friend comes back.
BLOCKS = _PRELUDE + """
local me = ARGV[2]
local epoch = current_epoch(ARGV[3])
local add = ARGV[4] == '+'
local cmd = add and 'SADD' or 'SREM'
local entries, changed, effective = {}, {}, {}
for i = 5, #ARGV, 2 do
  local blocker, blocked = ARGV[i], ARGV[i + 1]
  if redis.call(cmd, key('b:' .. blocker), blocked) == 1 then
    redis.call(cmd, key('B:' .. blocked), blocker)
    local n = (i - 3) / 2
    changed[#changed + 1] = n
    local friends = redis.call('SISMEMBER', key('f:' .. blocker), blocked) == 1
    local reverse = redis.call('SISMEMBER', key('b:' .. blocked), blocker) == 1
    local flips = friends and not reverse
    if flips then effective[#effective + 1] = n end
    if add then
      if flips then entries[#entries + 1] = pair_entry('f', blocker, blocked) end
      entries[#entries + 1] = entry('K', blocker, blocked)
    else
      entries[#entries + 1] = entry('k', blocker, blocked)
      if flips then entries[#entries + 1] = pair_entry('F', blocker, blocked) end
    end
  end
end
local seq = publish(me, epoch, entries)
return {epoch, changed, seq, effective}
"""

# ARGV: prefix, me, epoch candidate, now_ms, ttl_ms, grace_ms, dead_after_ms.
# A clean shutdown: stop vouching without announcing anyone offline yet.
# Users nobody else holds get a last-seen that makes the sweep expire them
# after the offline grace, so a client that reconnects to another instance
# in time is never shown offline. Returns the number of users we held.
RETIRE = _PRELUDE + """
local me = ARGV[2]
local tnow = redis_now()
local epoch = current_epoch(ARGV[3])
local expire_at = tonumber(ARGV[4]) - tonumber(ARGV[5]) + tonumber(ARGV[6])
local own = key('own:' .. me)
local users = redis.call('ZRANGE', own, 0, -1)
local others = alive_others(me, tnow, tonumber(ARGV[7]))
local entries = {}
for _, addr in ipairs(users) do
  local held = false
  for _, o in ipairs(others) do
    if redis.call('ZSCORE', key('own:' .. o), addr) then
      held = true
      break
    end
  end
  if held then
    entries[#entries + 1] = entry('L', addr, '')
  else
    redis.call('ZADD', key('seen'), 'XX', 'LT', expire_at, addr)
  end
end
publish(me, epoch, entries)
redis.call('DEL', own)
redis.call('SREM', key('members'), me)
redis.call('ZREM', key('alive'), me)
redis.call('HDEL', key('seq'), me)
return #users
"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPTS = {
    s.name: s
    for s in (
        _script("flush", FLUSH),
        _script("claim", CLAIM),
        _script("friends", FRIENDS),
        _script("blocks", BLOCKS),
        _script("retire", RETIRE),
    )
}


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names under one prefix (a hash tag, for Cluster)."""

    prefix: str = "{presenced}"

    def k(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def seen(self) -> str:
        return self.k("seen")

    @property
    def state(self) -> str:
        return self.k("state")

    @property
    def members(self) -> str:
        return self.k("members")

    @property
    def alive(self) -> str:
        return self.k("alive")

    @property
    def seq(self) -> str:
        return self.k("seq")

    @property
    def epoch(self) -> str:
        return self.k("epoch")

    @property
    def channel(self) -> str:
        return self.k("events")

    def listening(self, instance: str) -> str:
        """The channel an instance's listener holds beside `channel`, so that a
        script can count the listeners other than that instance's own."""
        return self.k(f"events:{instance}")

    def own(self, instance: str) -> str:
        return self.k(f"own:{instance}")

    def friends(self, address: str) -> str:
        """Stored friendships (blocked or not)."""
        return self.k(f"f:{address}")

    def blocking(self, address: str) -> str:
        """Whom the user blocks."""
        return self.k(f"b:{address}")

    def blocked_by(self, address: str) -> str:
        """Who blocks the user."""
        return self.k(f"B:{address}")

    def login(self, replay_key: bytes) -> str:
        """A login frame accepted by some instance (presenced.auth.replay_key), until it expires."""
        return self.k(f"login:{replay_key.hex()}")
