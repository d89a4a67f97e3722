"""The state store in Redis, shared by every gateway host (docs/governance.md, State store).

Each counting step (admit, reserve, finish) is one Lua script, so it is atomic across workers and hosts.
The times are the caller's `now`, never Redis's clock, so every backend counts the same way. A window holds
the entries after now-60, those stamped a little later than `now` included: calls racing from other threads
and hosts reach Redis in any order, and a count that skipped "future" entries would admit more than rpm. Per key:

    req:<id>      sorted set of admitted or finished requests: score = time, member = a random nonce
    tok:<id>      sorted set of token entries: score = time, member = "<nonce>:<tokens>"
    toksum:<id>   the sum of tok:<id>'s tokens, so a tpm check need not read the whole window
    slots:<id>    sorted set of in-flight slots: score = time taken, member = the slot
    spend:<id>:<period>  hash {spent, reserved} in whole nano-dollars (exact sums: ten 0.1 reach 1.0)
    keys          hash id -> KeyRecord JSON; version: a counter moved on by every put (from a random start)

Windows expire on their own WINDOW_TTL_S after their last write; spend of `total` never expires.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.cache.redis_backend import redact_url
from app.governance.keys import KeyRecord, Limits
from app.governance.store import (
    SLOT_LEASE_S,
    WINDOW_S,
    Admission,
    Finished,
    KeyUsage,
    Reservation,
    StateUnavailable,
)
from app.jsonwire import compact

WINDOW_TTL_S = 120  # a window key outlives its newest entry's minute; Redis drops idle ones
# Entries are trimmed this long after they leave the window, so a caller whose clock reads a little earlier than
# another's (a racing thread, a host slightly behind) still counts them.
TRIM_MARGIN_S = 2.0
SLOT_TTL_S = int(SLOT_LEASE_S) + 60  # a slot set outlives its newest slot's lease
PERIOD_TTL_S = 400 * 86400  # a day's or month's spend is kept a little over a year
NANO = 1_000_000_000  # spend is counted in whole nano-dollars
VERSION_START_RANGE = 1 << 48  # below 2**53: the version stays exact as a JSON number
FINISH_CHUNK = 256  # finished calls per script run, so one run never holds Redis long
_FAILURES = (redis.RedisError, OSError)

# Helpers every counting script shares. Times arrive as strings (Python's repr of the float), and are passed
# on as strings: Lua's own number-to-string conversion keeps only 14 digits.
_LUA_WINDOW = """
local function sum_of(entries)
  local total = 0
  for i = 1, #entries do total = total + (tonumber(string.match(entries[i], ':(%d+)$')) or 0) end
  return total
end
-- Tokens after cutoff: the running sum less the entries that left the window and are not trimmed yet.
local function window_tokens(tok, sum, cutoff)
  if redis.call('EXISTS', tok) == 0 then return 0 end
  local total = tonumber(redis.call('GET', sum) or '0') - sum_of(redis.call('ZRANGEBYSCORE', tok, '-inf', cutoff))
  if total < 0 then return 0 end
  return total
end
-- Drop requests and token entries at or before cutoff (TRIM_MARGIN_S before the window's start), keeping the
-- running sum in step.
local function trim(req, tok, sum, cutoff)
  redis.call('ZREMRANGEBYSCORE', req, '-inf', cutoff)
  local gone = redis.call('ZRANGEBYSCORE', tok, '-inf', cutoff)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', tok, '-inf', cutoff)
    if redis.call('EXISTS', tok) == 1 then redis.call('DECRBY', sum, sum_of(gone)) else redis.call('DEL', sum) end
  end
end
"""

# KEYS: req, tok, toksum, slots. ARGV: now, now-60, now-lease, nonce, slot, rpm, tpm, max_concurrent (0: none),
# window ttl, slot ttl, trim cutoff. Returns {admitted, limit, oldest entry's time or '', requests, tokens}.
_LUA_ADMIT = _LUA_WINDOW + """
local now, cutoff, lease_cutoff = ARGV[1], ARGV[2], ARGV[3]
local rpm, tpm, most = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
trim(KEYS[1], KEYS[2], KEYS[3], ARGV[11])
local requests = redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf')
local tokens = window_tokens(KEYS[2], KEYS[3], cutoff)
if rpm > 0 and requests >= rpm then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {0, 'rpm', oldest[2] or '', requests, tokens}
end
if tpm > 0 and tokens >= tpm then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {0, 'tpm', oldest[2] or '', requests, tokens}
end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', lease_cutoff)
  if redis.call('ZCARD', KEYS[4]) >= most then return {0, 'max_concurrent', '', requests, tokens} end
  redis.call('ZADD', KEYS[4], now, ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[10])
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[9])
return {1, '', '', requests + 1, tokens}
"""

# KEYS: keys, version. ARGV: id, JSON, a random start for a version counter that is missing.
# A Redis that lost its data starts the count somewhere new, so a worker never mistakes a new key set for the one
# it read before (same count, other keys).
_LUA_PUT = """
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

# KEYS: spend. ARGV: nano-dollars to reserve, budget in nano-dollars, ttl (0: none).
# Returns {reserved, spent, reserved total}.
_LUA_RESERVE = """
local held = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local spent, reserved = tonumber(held[1] or '0'), tonumber(held[2] or '0')
if spent + reserved >= tonumber(ARGV[2]) then return {0, spent, reserved} end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, spent, reserved}
"""

# The finished calls of one chunk, grouped by key. ARGV[1]: window ttl; then per key, with KEYS req, tok, toksum,
# slots and one spend hash per period: the number of periods, the trim cutoff, the numbers of requests, token
# entries and slots; the requests (score, nonce pairs), the token entries (score, "nonce:tokens" pairs) and their
# sum, the slots to free, and per period: nano-dollars to release, nano-dollars spent, ttl (0: none).
_LUA_FINISH = _LUA_WINDOW + """
local window_ttl = ARGV[1]
local k, a = 1, 2
while k <= #KEYS do
  local req, tok, sum, slots = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local periods, cutoff = tonumber(ARGV[a]), ARGV[a + 1]
  local requests, entries, freed = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  a = a + 5
  if requests > 0 then
    redis.call('ZADD', req, unpack(ARGV, a, a + 2 * requests - 1))
    redis.call('EXPIRE', req, window_ttl)
    a = a + 2 * requests
  end
  if entries > 0 then
    if redis.call('EXISTS', tok) == 0 then redis.call('DEL', sum) end
    redis.call('ZADD', tok, unpack(ARGV, a, a + 2 * entries - 1))
    a = a + 2 * entries
    redis.call('INCRBY', sum, ARGV[a])
    a = a + 1
    redis.call('EXPIRE', tok, window_ttl)
    redis.call('EXPIRE', sum, window_ttl)
  end
  if freed > 0 then
    redis.call('ZREM', slots, unpack(ARGV, a, a + freed - 1))
    a = a + freed
  end
  trim(req, tok, sum, cutoff)
  for p = 1, periods do
    local spend, release = KEYS[k + 3 + p], tonumber(ARGV[a])
    -- Releases are never negative, so one clamp of their sum equals clamping after each.
    local held = tonumber(redis.call('HGET', spend, 'reserved') or '0') - release
    if held < 0 then held = 0 end
    redis.call('HSET', spend, 'reserved', string.format('%d', held))
    redis.call('HINCRBY', spend, 'spent', ARGV[a + 1])
    if tonumber(ARGV[a + 2]) > 0 then redis.call('EXPIRE', spend, ARGV[a + 2]) end
    a = a + 3
  end
  k = k + 4 + periods
end
return 0
"""

# KEYS: req, tok, toksum, slots, spend. ARGV: now-60, now-lease, has a period (1/0).
# Returns {requests, tokens, in flight, spent, reserved}.
_LUA_USAGE = _LUA_WINDOW + """
local requests = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')
local tokens = window_tokens(KEYS[2], KEYS[3], ARGV[1])
local in_flight = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[2], '+inf')
local spent, reserved = 0, 0
if ARGV[3] == '1' then
  local held = redis.call('HMGET', KEYS[5], 'spent', 'reserved')
  spent, reserved = tonumber(held[1] or '0'), tonumber(held[2] or '0')
end
return {requests, tokens, in_flight, spent, reserved}
"""


class RedisStateStore:
    """Keys and counters in one Redis, shared by every worker of every host that names it."""

    def __init__(self, url: str, prefix: str = "portico:state:", *, connect_timeout_s: float = 1.0,
                 op_timeout_s: float = 2.0) -> None:
        """Create a client for url (no connection is made yet); every operation waits at most op_timeout_s."""
        self._prefix = prefix
        self._safe_url = redact_url(url)
        self._password = _password_of(url)
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=connect_timeout_s, socket_timeout=op_timeout_s,
                # No retries: a script that ran but whose answer was lost would count twice. A pooled
                # connection a Redis restart closed is found and reopened when it is taken from the pool.
                retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise StateUnavailable(f"state store: cannot use the Redis URL {self._safe_url} "
                                   f"({self._scrub(str(exc))})") from None
        self._put = self._client.register_script(_LUA_PUT)
        self._admit = self._client.register_script(_LUA_ADMIT)
        self._reserve = self._client.register_script(_LUA_RESERVE)
        self._finish = self._client.register_script(_LUA_FINISH)
        self._usage = self._client.register_script(_LUA_USAGE)

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a managed key (by id), and move the version on in the same script."""
        keys = [self._prefix + "keys", self._prefix + "version"]
        with self._reaching("storing a key"):
            self._put(keys, (record.id, compact(record.to_store()), secrets.randbelow(VERSION_START_RANGE)))

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Return a managed key by id, or None."""
        with self._reaching("reading a key"):
            data = self._client.hget(self._prefix + "keys", key_id)
        return None if data is None else self._record(key_id, data)

    def list_keys(self) -> list[KeyRecord]:
        """Return every managed key, oldest first."""
        with self._reaching("reading the keys"):
            stored: dict[str, str] = self._client.hgetall(self._prefix + "keys")  # type: ignore[assignment]
        records = [self._record(key_id, data) for key_id, data in stored.items()]
        return sorted(records, key=lambda record: (record.created_at, record.id))

    def version(self) -> int:
        """Return the key set's version counter (0 before the first put)."""
        with self._reaching("reading the keys' version"):
            value = self._client.get(self._prefix + "version")
        return int(value) if value is not None else 0  # type: ignore[arg-type]

    def admit(self, key_id: str, slot: str, now: float, limits: Limits) -> Admission:
        """Admit one call under `limits`, or refuse it naming the limit; one atomic script."""
        args = (_time(now), _time(now - WINDOW_S), _time(now - SLOT_LEASE_S), _nonce(), slot,
                limits.rpm or 0, limits.tpm or 0, limits.max_concurrent or 0, WINDOW_TTL_S, SLOT_TTL_S,
                _time(now - WINDOW_S - TRIM_MARGIN_S))
        with self._reaching("admitting a call"):
            admitted, limit, oldest, requests, tokens = self._admit(self._window_keys(key_id), args)
        if admitted:
            return Admission(True, requests=int(requests), tokens=int(tokens))
        retry = 1 if not oldest else max(1, math.ceil(float(oldest) + WINDOW_S - now))
        return Admission(False, limit=str(limit), retry_after_s=retry, requests=int(requests), tokens=int(tokens))

    def reserve(self, key_id: str, period: str, usd: float, budget_usd: float) -> Reservation:
        """Reserve `usd` of the period's budget unless spent + reserved already reach `budget_usd`; atomically."""
        args = (_nano(usd), _nano(budget_usd), _period_ttl(period))
        with self._reaching("reserving budget"):
            reserved, spent, held = self._reserve([self._spend_key(key_id, period)], args)
        return Reservation(bool(reserved), spent_usd=int(spent) / NANO, reserved_usd=int(held) / NANO)

    def finish(self, calls: Sequence[Finished]) -> None:
        """Record finished calls: a script per FINISH_CHUNK calls, every chunk in one round trip."""
        if not calls:
            return
        chunks = [calls[start:start + FINISH_CHUNK] for start in range(0, len(calls), FINISH_CHUNK)]
        with self._reaching("recording finished calls"):
            if len(chunks) == 1:
                self._finish(*self._finish_args(chunks[0]))
                return
            pipe = self._client.pipeline(transaction=False)
            for chunk in chunks:
                self._finish(*self._finish_args(chunk), client=pipe)
            pipe.execute()

    def usage(self, key_id: str, now: float, period: str | None) -> KeyUsage:
        """Return a key's use: spend and reservations in `period` (None: 0), requests, tokens and slots now."""
        keys = [*self._window_keys(key_id), self._spend_key(key_id, period or "-")]
        args = (_time(now - WINDOW_S), _time(now - SLOT_LEASE_S), "1" if period else "0")
        with self._reaching("reading a key's usage"):
            requests, tokens, in_flight, spent, reserved = self._usage(keys, args)
        return KeyUsage(spent_usd=int(spent) / NANO, reserved_usd=int(reserved) / NANO, requests=int(requests),
                        tokens=int(tokens), in_flight=int(in_flight))

    def close(self) -> None:
        """Close the connections; never raise."""
        try:
            self._client.close()
        except _FAILURES:
            pass

    def _finish_args(self, calls: Sequence[Finished]) -> tuple[list[str], list[Any]]:
        """Return the KEYS and ARGV of one finish script run: the calls grouped by key."""
        groups: dict[str, _KeyFinish] = {}
        for call in calls:
            group = groups.get(call.key_id)
            if group is None:
                group = groups[call.key_id] = _KeyFinish(call.at)
            group.add(call)
        keys: list[str] = []
        args: list[Any] = [WINDOW_TTL_S]
        for key_id, group in groups.items():
            keys += self._window_keys(key_id)
            keys += [self._spend_key(key_id, period) for period in group.spend]
            args += [len(group.spend), _time(group.newest - WINDOW_S - TRIM_MARGIN_S), len(group.requests) // 2,
                     len(group.entries) // 2, len(group.slots), *group.requests, *group.entries]
            if group.entries:
                args.append(group.tokens)
            args += group.slots
            for period, (release, cost) in group.spend.items():
                args += [release, cost, _period_ttl(period)]
        return keys, args

    def _window_keys(self, key_id: str) -> list[str]:
        """Return a key's request, token, token-sum and slot keys."""
        p = self._prefix
        return [f"{p}req:{key_id}", f"{p}tok:{key_id}", f"{p}toksum:{key_id}", f"{p}slots:{key_id}"]

    def _spend_key(self, key_id: str, period: str) -> str:
        """Return the hash of a key's spend in a period (periods hold no colon, so the name reads one way)."""
        return f"{self._prefix}spend:{key_id}:{period}"

    def _record(self, key_id: str, data: str | bytes) -> KeyRecord:
        """Return the KeyRecord stored as JSON, or raise StateUnavailable naming the unreadable key."""
        try:
            return KeyRecord.from_store(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateUnavailable(f"state store: the key {key_id!r} in Redis at {self._safe_url} cannot be read "
                                   f"({type(exc).__name__}: {exc})") from None

    @contextmanager
    def _reaching(self, doing: str) -> Iterator[None]:
        """Turn any Redis or socket failure into StateUnavailable, its text free of the password."""
        try:
            yield
        except _FAILURES as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            # from None: the original error's text and its chain stay out of logs (they could hold the URL).
            raise StateUnavailable(f"state store: Redis at {self._safe_url} failed while {doing} ({detail})") from None

    def _scrub(self, text: str) -> str:
        """Return text with the URL's password replaced by ***."""
        return text.replace(self._password, "***") if self._password else text


class _KeyFinish:
    """One key's share of a finish batch, as the finish script takes it."""

    def __init__(self, at: float) -> None:
        self.newest = at
        self.requests: list[str] = []  # score, nonce, ...
        self.entries: list[str] = []  # score, "nonce:tokens", ...
        self.tokens = 0
        self.slots: list[str] = []
        self.spend: dict[str, list[int]] = {}  # period -> [nano-dollars released, nano-dollars spent]

    def add(self, call: Finished) -> None:
        """Add one finished call."""
        self.newest = max(self.newest, call.at)
        nonce = _nonce()
        if not call.counted:
            self.requests += [_time(call.at), nonce]
        tokens = int(call.tokens)
        if tokens > 0:
            self.entries += [_time(call.at), f"{nonce}:{tokens}"]
            self.tokens += tokens
        if call.slot:
            self.slots.append(call.slot)
        if call.period:
            release, cost = _nano(max(0.0, call.reserved_usd)), _nano(call.cost_usd)
            if release or cost:
                totals = self.spend.setdefault(call.period, [0, 0])
                totals[0] += release
                totals[1] += cost


def _time(seconds: float) -> str:
    """Return epoch seconds as Redis reads a score: every digit of the float kept."""
    return repr(float(seconds))


def _nano(usd: float) -> int:
    """Return dollars as whole nano-dollars."""
    return round(usd * NANO)


def _nonce() -> str:
    """Return a member no other window entry has."""
    return os.urandom(8).hex()


def _period_ttl(period: str) -> int:
    """Return how long a period's spend is kept after its last change, in seconds (0: for ever)."""
    return 0 if period == "total" else PERIOD_TTL_S


def _password_of(url: str) -> str | None:
    """Return the password url carries (user-info or ?password=), if any, to scrub from error texts."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
    except ValueError:
        return None
    return next(iter(parse_qs(parts.query).get("password", ())), None)
