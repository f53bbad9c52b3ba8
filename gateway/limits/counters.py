"""The check-and-reserve engine behind rate limits and budgets, in memory or in Redis.

Three kinds of counter, each checked and reserved all-or-nothing for one request:

- `window`: a sliding-window log — at most `limit` units (requests or tokens) in any trailing
  `span_ms`. Entries are `id:amount` members of a sorted set scored by time, plus their sum, so
  there is no fixed-window boundary to double-burst across. A request is admitted into an empty
  window whatever its size (a tokens-per-minute limit never locks a large request out for good).
- `lease`: requests in flight; each lease expires after `span_ms` unless released first, so a
  replica that dies does not hold its slots forever.
- `budget`: spend so far (`spent`) plus reservations in flight must stay within `limit`
  (nano-USD); a reservation expires like a lease, and settles into `spent` with the actual cost.

In Redis, one request's checks are one Lua script — one round trip, atomic across replicas; the
time is Redis's own (`TIME`), so replicas' clocks do not matter. In memory the same algorithm
runs on the event loop (one process).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.state.redis_client import call, open_redis
from gateway.state.settings import StateSettings

WINDOW, LEASE, BUDGET = "window", "lease", "budget"


class StateUnavailable(RuntimeError):
    """The state store did not answer in time (or at all)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One counter to check and reserve `amount` on."""

    kind: str
    key: str  # without the store's prefix
    limit: int
    span_ms: int  # window length, or lease/reservation lifetime
    amount: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """`ok`, or which check failed (`failed`, an index), and how long until it would pass."""

    ok: bool
    failed: int = -1
    retry_after_ms: int = 0
    # per check up to the failed one included, before this request: window sum, leases, spent+reserved
    used: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Settle:
    """Undo or replace one reserved amount: `actual` replaces `reserved` (window: tokens; budget:
    nano-USD added to spend, kept `keep_ms`); a lease is released."""

    kind: str
    key: str
    reserved: int
    actual: int
    keep_ms: int = 0


class Counters(Protocol):
    async def reserve(self, request_id: str, checks: Sequence[Check]) -> Verdict: ...

    async def settle(self, request_id: str, ops: Sequence[Settle]) -> None: ...

    async def restore(self, key: str, spent: int, keep_ms: int) -> None:
        """Raise a budget's spend to at least `spent` (the rebuild from the audit log)."""
        ...

    async def close(self) -> None: ...


def open_counters(settings: StateSettings) -> Counters:
    if settings.backend == "redis":
        return RedisCounters(settings)
    return MemoryCounters()


# --- in memory -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    entries: deque[tuple[int, str, int]] = field(default_factory=deque)  # (time, id, amount)
    amounts: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def expire(self, before: int) -> None:
        while self.entries and self.entries[0][0] <= before:
            _, rid, _ = self.entries.popleft()
            self.total -= self.amounts.pop(rid, 0)


@dataclass(slots=True)
class _Leases:
    until: dict[str, int] = field(default_factory=dict)  # id -> expiry
    amounts: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def expire(self, now: int) -> None:
        for rid in [r for r, t in self.until.items() if t <= now]:
            del self.until[rid]
            self.total -= self.amounts.pop(rid, 0)


@dataclass(slots=True)
class _Budget:
    spent: int = 0
    leases: _Leases = field(default_factory=_Leases)
    expires: int = 0


class MemoryCounters:
    """One process's counters; check-and-reserve is atomic because it never awaits."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._leases: dict[str, _Leases] = {}
        self._budgets: dict[str, _Budget] = {}

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def reserve(self, request_id: str, checks: Sequence[Check]) -> Verdict:
        now = self._now()
        used: list[int] = []
        for i, c in enumerate(checks):
            if c.kind == WINDOW:
                w = self._windows.setdefault(c.key, _Window())
                w.expire(now - c.span_ms)
                if w.total > 0 and w.total + c.amount > c.limit:
                    return Verdict(False, i, _window_retry(w, c, now), (*used, w.total))
                used.append(w.total)
            elif c.kind == LEASE:
                leases = self._leases.setdefault(c.key, _Leases())
                leases.expire(now)
                if leases.total + c.amount > c.limit:
                    return Verdict(
                        False, i, min(leases.until.values(), default=now + 1000) - now, tuple(used)
                    )
                used.append(leases.total)
            else:
                b = self._budget(c.key, now)
                b.leases.expire(now)
                current = b.spent + b.leases.total
                if current + c.amount > c.limit:
                    return Verdict(False, i, 0, (*used, current))
                used.append(current)
        for c in checks:
            if c.kind == WINDOW:
                w = self._windows[c.key]
                w.entries.append((now, request_id, c.amount))
                w.amounts[request_id] = c.amount
                w.total += c.amount
            else:
                leases = self._leases[c.key] if c.kind == LEASE else self._budgets[c.key].leases
                leases.until[request_id] = now + c.span_ms
                leases.amounts[request_id] = c.amount
                leases.total += c.amount
        return Verdict(True, used=tuple(used))

    async def settle(self, request_id: str, ops: Sequence[Settle]) -> None:
        now = self._now()
        for op in ops:
            if op.kind == WINDOW:
                w = self._windows.get(op.key)
                if w is not None and request_id in w.amounts:
                    w.total += op.actual - w.amounts[request_id]
                    w.amounts[request_id] = op.actual
            elif op.kind == LEASE:
                leases = self._leases.get(op.key)
                if leases is not None and request_id in leases.until:
                    del leases.until[request_id]
                    leases.total -= leases.amounts.pop(request_id, 0)
            else:
                b = self._budget(op.key, now)
                if request_id in b.leases.until:
                    del b.leases.until[request_id]
                    b.leases.total -= b.leases.amounts.pop(request_id, 0)
                b.spent += op.actual
                b.expires = now + op.keep_ms

    async def restore(self, key: str, spent: int, keep_ms: int) -> None:
        now = self._now()
        b = self._budget(key, now)
        b.spent = max(b.spent, spent)
        b.expires = now + keep_ms

    def _budget(self, key: str, now: int) -> _Budget:
        b = self._budgets.get(key)
        if b is None or (b.expires and b.expires <= now and not b.leases.until):
            b = self._budgets[key] = _Budget()
        return b

    async def close(self) -> None:
        pass


def _window_retry(w: _Window, c: Check, now: int) -> int:
    """Milliseconds until enough of the window has slid out for `c.amount` to fit."""
    freed = 0
    for ts, _, amount in w.entries:
        freed += amount
        if w.total - freed == 0 or w.total - freed + c.amount <= c.limit:
            return max(ts + c.span_ms - now, 1)
    return c.span_ms


# --- Redis -------------------------------------------------------------------------------------------

# KEYS: three per check (set, sum, reserved). ARGV: request id, then four per check:
# kind, limit, span_ms, amount. Returns {1, 0, 0, used…} or {0, failed index, retry ms, used…}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local n = (#ARGV - 1) / 4
local used = {}
local function expire_entries(z, s, upto)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', upto)
  if #old == 0 then return end
  local gone = 0
  for _, m in ipairs(old) do gone = gone + tonumber(string.match(m, ':(%-?%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', upto)
  local left = redis.call('DECRBY', s, gone)
  if left < 0 then redis.call('SET', s, 0, 'KEEPTTL') end
end
for i = 1, n do
  local kind, limit = ARGV[i * 4 - 2], tonumber(ARGV[i * 4 - 1])
  local span, amount = tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
  local z, s, r = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]
  if kind == 'window' then
    expire_entries(z, s, now - span)
    local cur = tonumber(redis.call('GET', s) or '0')
    if cur > 0 and cur + amount > limit then
      local freed, retry = 0, span
      local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], ':(%-?%d+)$'))
        if cur - freed <= 0 or cur - freed + amount <= limit then
          retry = math.max(tonumber(entries[j + 1]) + span - now, 1)
          break
        end
      end
      table.insert(used, cur)
      return {0, i, retry, unpack(used)}
    end
    table.insert(used, cur)
  elseif kind == 'lease' then
    expire_entries(z, r, now)
    local cur = tonumber(redis.call('GET', r) or '0')
    if cur + amount > limit then
      local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      local retry = 1000
      if #first == 2 then retry = math.max(tonumber(first[2]) - now, 1) end
      table.insert(used, cur)
      return {0, i, retry, unpack(used)}
    end
    table.insert(used, cur)
  else
    expire_entries(z, r, now)
    local cur = tonumber(redis.call('GET', s) or '0') + tonumber(redis.call('GET', r) or '0')
    if cur + amount > limit then
      table.insert(used, cur)
      return {0, i, 0, unpack(used)}
    end
    table.insert(used, cur)
  end
end
for i = 1, n do
  local kind, span, amount = ARGV[i * 4 - 2], tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
  local z, s, r = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]
  local member = id .. ':' .. amount
  if kind == 'window' then
    redis.call('ZADD', z, now, member)
    redis.call('INCRBY', s, amount)
    redis.call('PEXPIRE', z, span)
    redis.call('PEXPIRE', s, span)
  else
    redis.call('ZADD', z, now + span, member)
    redis.call('INCRBY', r, amount)
    redis.call('PEXPIRE', z, span)
    redis.call('PEXPIRE', r, span)
  end
end
return {1, 0, 0, unpack(used)}
"""

# KEYS: three per op. ARGV: request id, then four per op: kind, reserved, actual, keep_ms.
_SETTLE = """
local id = ARGV[1]
local n = (#ARGV - 1) / 4
for i = 1, n do
  local kind, reserved = ARGV[i * 4 - 2], ARGV[i * 4 - 1]
  local actual, keep = tonumber(ARGV[i * 4]), tonumber(ARGV[i * 4 + 1])
  local z, s, r = KEYS[i * 3 - 2], KEYS[i * 3 - 1], KEYS[i * 3]
  local member = id .. ':' .. reserved
  if kind == 'window' then
    local score = redis.call('ZSCORE', z, member)
    if score then
      redis.call('ZREM', z, member)
      redis.call('ZADD', z, score, id .. ':' .. actual)
      local left = redis.call('INCRBY', s, actual - tonumber(reserved))
      if left < 0 then redis.call('SET', s, 0, 'KEEPTTL') end
    end
  else
    if redis.call('ZREM', z, member) == 1 then
      local left = redis.call('DECRBY', r, tonumber(reserved))
      if left < 0 then redis.call('SET', r, 0, 'KEEPTTL') end
    end
    if kind == 'budget' then
      redis.call('INCRBY', s, actual)
      redis.call('PEXPIRE', s, keep)
    end
  end
end
return 1
"""

_RESTORE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisCounters:
    """Counters shared by every replica through one Redis; each call is one script, one round trip."""

    def __init__(self, settings: StateSettings) -> None:
        self._client = open_redis(settings, settings.timeout_s)
        self._prefix = settings.prefix
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._restore = self._client.register_script(_RESTORE)
        self.description = f"redis {settings.safe_redis_url}"

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}lim:{key}"
        return [f"{base}:set", f"{base}:sum", f"{base}:held"]

    async def reserve(self, request_id: str, checks: Sequence[Check]) -> Verdict:
        keys: list[str] = []
        args: list[Any] = [request_id]
        for c in checks:
            keys += self._keys(c.key)
            args += [c.kind, c.limit, c.span_ms, c.amount]
        result = await self._call(self._reserve(keys=keys, args=args))
        ok, failed, retry, *used = (int(v) for v in result)
        return Verdict(bool(ok), failed - 1, retry, tuple(used))

    async def settle(self, request_id: str, ops: Sequence[Settle]) -> None:
        keys: list[str] = []
        args: list[Any] = [request_id]
        for op in ops:
            keys += self._keys(op.key)
            args += [op.kind, op.reserved, op.actual, max(op.keep_ms, 1)]
        if ops:
            await self._call(self._settle(keys=keys, args=args))

    async def restore(self, key: str, spent: int, keep_ms: int) -> None:
        await self._call(self._restore(keys=self._keys(key)[1:2], args=[spent, max(keep_ms, 1)]))

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        return await call(awaitable, self.description, StateUnavailable)
