"""The Redis backend: one budget shared exactly by every gateway replica.

Each admission is one atomic Lua script (EVALSHA, one round trip; reloaded on NOSCRIPT
after a Redis restart) that first applies the settlements it carries, then checks every
limit of the request and consumes from all of them only if all allow. Time is Redis's own
`TIME`, so replicas with skewed clocks still share one timeline. All keys of a team share
the hash tag `{prefix:team}`, so a call's keys live in one slot and the script runs
unchanged on a Redis Cluster, on the master serving that slot (`limiter.nodes` routes it).
Every key carries a TTL: an idle team leaves nothing behind.

Every call has a deadline (`redis_timeout_ms`, from when it is sent; see `limiter.nodes`),
and Redis is told about it: a deadline abandons the caller, not the script, which may
still reach Redis later, so the admission script compares the deadline with Redis's `TIME`
and takes nothing once it has passed. The
deadline is converted to the clock of the server the call goes to with an offset learnt
from that server (`ClockOffset`: at warm-up from `TIME`, then from the `now` every script
reply carries), never by trusting this host's wall clock to agree with Redis's; until an
offset is known no deadline is sent. A caller that gave up cannot know whether its script
ran in time (its answer may be what was late), so the rate-limit stage gives the lease back
anyway; settlement is idempotent (tickets, see `base`), which makes that, and sending any
settlement twice, safe.

When a Redis server refuses connections, or misses the deadline three times in a row, calls
that would go to it fail at once (LimiterUnavailable) for `redis_retry_interval_s`, then
probe it again: a dead Redis costs at most one deadline per interval, and the limiter
recovers by itself when Redis is back (on a cluster: or when a replica has been promoted
in its place). A single missed deadline does not open the breaker: under a burst the
gateway's own event loop can be late, and one slow answer is no reason to stop limiting
everyone. See `limiter.nodes` for the servers, their breakers and a cluster's failover.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.config import RateLimitConfig
from gateway.limiter.base import (
    SLACK_MS,
    CheckResult,
    LimitCheck,
    LimiterUnavailable,
    LimitKind,
    Settlement,
    SliceRequest,
)
from gateway.limiter.nodes import ClockOffset as ClockOffset  # the tests' name for it
from gateway.limiter.nodes import RedisNodes, Script
from gateway.limiter.slices import SLICE_DIVISOR, SliceBook

_NOW = f"""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local slack = {SLACK_MS}
"""

# One script for admissions and for settlement batches (a batch is an admission with no
# check and no deadline). Keys are passed once each and named by their position in KEYS.
#
# ARGV: deadline in Redis milliseconds ('' for none), lease id, lease ttl ms, index of the
#   ticket key (0: no ticket), number of checks; per check: key index, kind ('b' bucket or
#   'c' concurrency), limit, cost, period ms; number of settlements, then each in its wire
#   form (`Settlement.wire`: one string; its keys, named there, are in KEYS too); then the
#   slices wanted: index of the key their tickets go under, the divisor, their number, and
#   per slice: key index, kind, limit, period ms, units wanted, id, ttl ms.
# Returns: Redis's now (ms), 1 if decided or 0 if the deadline had passed (nothing taken),
#   then per check: allowed, remaining, reset_ms, retry_after_ms (-1: none); then per slice:
#   granted (1 or 0), units left after it.
LIMIT = (
    _NOW
    + """
local at = 0
local function arg()
  at = at + 1
  return ARGV[at]
end
local function int()
  return tonumber(arg())
end
-- Lengthens a key's life, never shortens it: one team's requests hold leases and tickets
-- of different lengths (per model) under one key.
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function store(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', key)
  end
end
local swept = {}
local function tickets(key)
  if not swept[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    swept[key] = true
  end
  return key
end

local deadline, lease_id, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local ticket, checks = tonumber(ARGV[4]), tonumber(ARGV[5])

-- Settlements first, so the checks below count every request that finished before this
-- one. Each applies its token difference only if it closes its request's ticket.
at = 5 + checks * 5
local settlements = int()
for _ = 1, settlements do
  local w = {}
  for word in string.gmatch(arg(), '%S+') do
    w[#w + 1] = word
  end
  local id, p, open = w[1], 3, false
  if w[2] == '1' then
    open = redis.call('ZREM', tickets(w[3]), id) == 1
    p = 4
  elseif w[2] == '2' then
    -- No ticket was opened (a request admitted from a slice): applied by the first call
    -- that carries it, which leaves a marker for as long as it may be carried again.
    local marks, life = tickets(w[3]), tonumber(w[4])
    open = redis.call('ZADD', marks, 'NX', now + life, id) == 1
    keep(marks, life)
    p = 5
  end
  for _ = 1, tonumber(w[p]) do
    p = p + 1
    redis.call('ZREM', w[p], id)
  end
  p = p + 1
  for _ = 1, tonumber(w[p]) do
    if open then
      local key, limit = w[p + 1], tonumber(w[p + 2])
      local delta, period = tonumber(w[p + 3]), tonumber(w[p + 4])
      local interval = period / limit
      local tat = tonumber(redis.call('GET', key) or now)
      if delta > 0 then
        store(key, math.max(tat, now) + delta * interval)
      else
        store(key, math.max(now, tat + delta * interval))
      end
    end
    p = p + 4
  end
end
local grants_at = at

-- Its caller has given up: whatever this took, nobody would give back.
if deadline and now >= deadline then
  return {now, 0}
end

local out, ok, take = {now, 1}, true, {}
at = 5
for i = 1, checks do
  local key = KEYS[int()]
  local kind = arg()
  local limit = int()
  local cost = int()
  local period = int()
  local r = #out
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    if held < limit then
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 1, limit - held - 1, 0, -1
      take[i] = {key}
    else
      ok = false
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 0, 0, 0, 1000
    end
  else
    -- As gcra() in base.py: differences between nearby values only.
    local interval = period / limit
    local tat = tonumber(redis.call('GET', key) or now)
    local base = math.max(tat, now)
    local current = base - now
    local debt = current + cost * interval
    local left = math.max(math.floor((period - current + slack) / interval), 0)
    if cost > limit then
      ok = false
      out[r + 1], out[r + 2], out[r + 3], out[r + 4] = 0, left, math.floor(current), -1
    elseif debt > period + slack then
      ok = false
      out[r + 1], out[r + 2], out[r + 3] = 0, left, math.floor(current)
      out[r + 4] = math.ceil(debt - period)
    else
      take[i] = {key, base + cost * interval}
      out[r + 1], out[r + 2] = 1, math.floor((period - debt + slack) / interval)
      out[r + 3], out[r + 4] = math.floor(debt), -1
    end
  end
end
if ok then
  for i = 1, checks do
    local key, new_tat = take[i][1], take[i][2]
    if new_tat then
      store(key, new_tat)
    else
      redis.call('ZADD', key, now + ttl, lease_id)
      keep(key, ttl)
    end
  end
  if ticket > 0 then
    redis.call('ZADD', tickets(KEYS[ticket]), now + ttl, lease_id)
    keep(KEYS[ticket], ttl)
  end
end

-- Slices (see limiter.slices): each grant takes exactly `want` units, and only while that
-- is at most 1/divisor of what is left; else nothing. A bucket's slice is consumed like an
-- admission of cost `want` and opens a ticket (its id) that its return closes; a
-- concurrency slice is `want` lease members, id.0 .. id.(want-1).
at = grants_at
local grant_ticket, divisor = int(), int()
for _ = 1, int() do
  local key = KEYS[int()]
  local kind, limit, period, want, id, life = arg(), int(), int(), int(), arg(), int()
  local r = #out
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local free = limit - redis.call('ZCARD', key)
    if want * divisor <= free then
      for i = 0, want - 1 do
        redis.call('ZADD', key, now + life, id .. '.' .. i)
      end
      keep(key, life)
      out[r + 1], out[r + 2] = 1, free - want
    else
      out[r + 1], out[r + 2] = 0, math.max(free, 0)
    end
  else
    local interval = period / limit
    local tat = tonumber(redis.call('GET', key) or now)
    local base = math.max(tat, now)
    local left = math.max(math.floor((period - (base - now) + slack) / interval), 0)
    if want * divisor <= left then
      store(key, base + want * interval)
      redis.call('ZADD', tickets(KEYS[grant_ticket]), now + life, id)
      keep(KEYS[grant_ticket], life)
      out[r + 1], out[r + 2] = 1, left - want
    else
      out[r + 1], out[r + 2] = 0, left
    end
  end
end
return out
"""
)

PEEK = (
    _NOW
    + """
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
return math.max(math.floor((period - math.max(tat - now, 0) + slack) / interval), 0)
"""
)


class _Call:
    """Keys and arguments of one LIMIT call; each key is sent once, named by its position."""

    __slots__ = ("_index", "args", "keys", "riders")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[Any] = [""]  # the deadline, set just before the call
        self._index: dict[str, int] = {}
        # Where the settlements are in `args`, and how many: once per batch is enough.
        self.riders: tuple[int, int] | None = None

    def key(self, key: str | None) -> int:
        if key is None:
            return 0
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        return index

    def settlements(self, settlements: Sequence[Settlement]) -> None:
        self.riders = (len(self.args), len(settlements))
        self.args.append(len(settlements))
        for settlement in settlements:
            for key in settlement.keys:  # declared, as Redis Cluster wants
                self.key(key)
            self.args.append(settlement.wire)

    def slices(self, tickets_key: str | None, wanted: Sequence[SliceRequest]) -> None:
        args = self.args
        args += [self.key(tickets_key), SLICE_DIVISOR, len(wanted)]
        for want in wanted:
            kind = "c" if want.kind is LimitKind.CONCURRENCY else "b"
            args += [self.key(want.key), kind, want.limit, want.period_ms, want.want]
            args += [want.slice_id, want.ttl_ms]


class RedisLimiter:
    def __init__(self, config: RateLimitConfig, url: str) -> None:
        self._timeout = config.redis_timeout_ms / 1000.0
        self._limit = Script.of(LIMIT)
        self._peek = Script.of(PEEK)
        self._nodes = RedisNodes(
            url,
            timeout_s=self._timeout,
            retry_interval_s=config.redis_retry_interval_s,
            scripts=(self._limit, self._peek),
        )
        # Budget slices (see `limiter.slices`); None: one call per admission.
        self.slices: SliceBook | None = (
            SliceBook(self, config.slice_ttl_ms / 1000.0) if config.slices else None
        )

    @property
    def call_deadline_s(self) -> float:
        return self._nodes.call_bound_s

    async def admit(
        self,
        checks: list[LimitCheck],
        lease_id: str,
        lease_ttl_ms: int,
        *,
        ticket_key: str | None = None,
        settlements: Sequence[Settlement] = (),
    ) -> list[CheckResult]:
        call = _Call()
        args = call.args
        args += [lease_id, lease_ttl_ms, call.key(ticket_key), len(checks)]
        for check in checks:
            kind = "c" if check.kind is LimitKind.CONCURRENCY else "b"
            args += [call.key(check.key), kind, check.limit, check.cost, check.period_ms]
        call.settlements(settlements)
        call.slices(None, ())
        flat = await self._run(call, with_deadline=True)
        return [
            CheckResult(
                allowed=flat[i] == 1,
                remaining=int(flat[i + 1]),
                reset_ms=int(flat[i + 2]),
                retry_after_ms=None if flat[i] == 1 or flat[i + 3] < 0 else int(flat[i + 3]),
            )
            for i in range(2, len(flat), 4)
        ]

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        if not settlements:
            return
        call = _Call()
        call.args += ["", 0, 0, 0]  # no lease, no ticket, no check
        call.settlements(settlements)
        call.slices(None, ())
        # No deadline: a settlement applied late is still right (and applied once).
        await self._run(call, with_deadline=False)

    async def take_slices(
        self, tickets_key: str, wanted: Sequence[SliceRequest]
    ) -> list[tuple[bool, int]]:
        """Asks for budget slices in one call (one team's keys): per slice, whether it was
        granted and the units Redis has left after it. With the deadline: a late call
        takes nothing."""
        call = _Call()
        call.args += ["", 0, 0, 0]  # no lease, no ticket, no check
        call.settlements(())
        call.slices(tickets_key, wanted)
        flat = await self._run(call, with_deadline=True)
        return [(flat[i] == 1, int(flat[i + 1])) for i in range(2, len(flat), 2)]

    async def in_flight(self, key: str) -> int:
        now_ms = int(time.time() * 1000)
        count: int = await self._nodes.command(key, "ZCOUNT", key, now_ms, "+inf")
        return count

    async def remaining(self, check: LimitCheck) -> int:
        left, _ = await self._nodes.evalsha(self._peek, [check.key], [check.limit, check.period_ms])
        return int(left)

    async def warm_up(self) -> None:
        """Connect, load the scripts and learn Redis's clock (on a cluster: read the slot
        map, then that on every master) before traffic arrives, so the first requests do
        not pay for them and get a deadline. Never raises: a Redis that is down now is
        marked unavailable (readiness shows it) until a call probes it again."""
        await self._nodes.warm_up(mark_failure=True)

    async def close(self) -> None:
        if self.slices is not None:
            await self.slices.close()  # gives back what the slices hold unused
        await self._nodes.close()

    @property
    def available(self) -> bool:
        """Every Redis server that calls go to (each master of a cluster) is believed up."""
        return self._nodes.available

    async def _run(self, call: _Call, *, with_deadline: bool) -> list[Any]:
        """One LIMIT call: with the deadline, in the clock of the node it goes to, when
        asked for and known; the reply's `now` teaches that node's clock offset."""
        reply, node = await self._nodes.evalsha(
            self._limit, call.keys, call.args, with_deadline=with_deadline, riders=call.riders
        )
        flat: list[Any] = reply
        node.offset.observe(flat[0], time.monotonic())
        if flat[1] == 0:
            # Redis ran it after the deadline and took nothing; our offset was loose (the
            # reply has just tightened it). As good as a timeout for the caller.
            self._nodes.failed(node, refused=False)
            raise LimiterUnavailable("Redis ran the call after its deadline")
        return flat
