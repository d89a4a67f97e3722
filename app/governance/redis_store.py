"""The state store in Redis, shared by every gateway host (docs/governance.md, State store).

Each counting step (admit, with its budget's reservation; reserve; finish) is one Lua script, so it is atomic
across workers and hosts. The times are the caller's `now`, never Redis's clock, so every backend counts the
same way. A window holds the entries after now-60, those stamped a little later than `now` included: calls
racing from other threads and hosts reach Redis in any order, and a count that skipped "future" entries would
admit more than rpm. Per key:

    req:<id>      sorted set of admitted or finished requests: score = time, member = a random nonce
    tok:<id>      sorted set of token entries: score = time, member = "<nonce>:<tokens>"
    toksum:<id>   the sum of tok:<id>'s tokens, so a tpm check need not read the whole window
    slots:<id>    sorted set of in-flight slots: score = time taken, member = the slot
    spend:<id>:<period>  hash {spent, reserved} in whole nano-dollars (exact sums: ten 0.1 reach 1.0)
    keys          hash id -> KeyRecord JSON; version: a counter moved on by every put (from a random start)

Windows expire on their own WINDOW_TTL_S after their last write; spend of `total` never expires.

admit runs on every call of a governed key, so the client side is kept lean: redis-py opens each connection
(whatever the URL names: host or Unix socket, TLS, AUTH, database), then the store speaks RESP on its socket
itself. A command is packed in one go and sent in one write, and its reply is read straight from the socket,
without redis-py's per-command work (pool checkout and release, observability hooks, its reply parser), which
cost several times the round trip. The counting scripts answer with one string of space-separated fields, the
cheapest reply to read. Connections are kept in a list of idle ones, taken and put back without a lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import select
import socket
from collections.abc import Sequence
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
    BudgetAsk,
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
READ_SIZE = 65536  # bytes asked of the socket per read
_FAILURES = (redis.RedisError, OSError)

# The constants every script shares, and its helpers. Times arrive as strings (Python's repr of the float);
# a time a script works out is written back with 17 digits (`at`), which reads as the very same float:
# Lua's own number-to-string conversion keeps only 14.
_LUA_COMMON = f"""
local WINDOW, LEASE, MARGIN = {WINDOW_S!r}, {SLOT_LEASE_S!r}, {TRIM_MARGIN_S!r}
local WINDOW_TTL, SLOT_TTL = {WINDOW_TTL_S}, {SLOT_TTL_S}
""" + """
local function at(t) return string.format('%.17g', t) end
local function int(n) return string.format('%d', n) end
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
-- A period's spend and reservations (nano-dollars).
local function spend_of(spend)
  local held = redis.call('HMGET', spend, 'spent', 'reserved')
  return tonumber(held[1] or '0'), tonumber(held[2] or '0')
end
"""

# KEYS: req, tok, toksum, slots, and with a budget the period's spend. ARGV: now, nonce, slot, rpm, tpm,
# max_concurrent (0: none), and with a budget: nano-dollars to reserve, the budget in nano-dollars, the spend's
# ttl (0: none). Nothing is written until every limit and the budget have passed.
# Returns "admitted limit oldest requests tokens spent reserved": limit and the oldest entry's time are "-" when
# none; spent and reserved are the period's (0 when a rate limit refused before the budget was read).
_LUA_ADMIT = _LUA_COMMON + """
local now = tonumber(ARGV[1])
local cutoff = at(now - WINDOW)
local rpm, tpm, most = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function answer(admitted, limit, oldest, requests, tokens, spent, reserved)
  return table.concat({admitted, limit, oldest, int(requests), int(tokens), int(spent), int(reserved)}, ' ')
end
trim(KEYS[1], KEYS[2], KEYS[3], at(now - WINDOW - MARGIN))
local requests = redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf')
local tokens = window_tokens(KEYS[2], KEYS[3], cutoff)
if rpm > 0 and requests >= rpm then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return answer(0, 'rpm', oldest[2] or '-', requests, tokens, 0, 0)
end
if tpm > 0 and tokens >= tpm then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cutoff, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return answer(0, 'tpm', oldest[2] or '-', requests, tokens, 0, 0)
end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', at(now - LEASE))
  if redis.call('ZCARD', KEYS[4]) >= most then return answer(0, 'max_concurrent', '-', requests, tokens, 0, 0) end
end
local spent, reserved = 0, 0
if KEYS[5] then
  spent, reserved = spend_of(KEYS[5])
  if spent + reserved >= tonumber(ARGV[8]) then return answer(0, 'budget', '-', requests, tokens, spent, reserved) end
  if tonumber(ARGV[7]) > 0 then
    reserved = redis.call('HINCRBY', KEYS[5], 'reserved', ARGV[7])
    if tonumber(ARGV[9]) > 0 then redis.call('EXPIRE', KEYS[5], ARGV[9]) end
  end
end
if most > 0 then
  redis.call('ZADD', KEYS[4], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[4], SLOT_TTL)
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], WINDOW_TTL)
return answer(1, '-', '-', requests + 1, tokens, spent, reserved)
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
# Returns "reserved spent reserved-total".
_LUA_RESERVE = _LUA_COMMON + """
local spent, reserved = spend_of(KEYS[1])
if spent + reserved >= tonumber(ARGV[2]) then return table.concat({0, int(spent), int(reserved)}, ' ') end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return table.concat({1, int(spent), int(reserved)}, ' ')
"""

# The finished calls of one chunk, grouped by key. Per key, with KEYS req, tok, toksum, slots and one spend hash
# per period, ARGV holds: the number of periods, the newest call's end, the requests to count ("time nonce ...",
# one argument), the token entries ("time nonce:tokens ...", one argument) and their sum, the number of slots to
# free and the slots, and per period: nano-dollars to release, nano-dollars spent, ttl (0: none). The store makes
# the times and nonces itself, so they never hold a space; slots come as they are, one argument each.
_LUA_FINISH = _LUA_COMMON + """
local function words(text)
  local list = {}
  for word in string.gmatch(text, '%S+') do list[#list + 1] = word end
  return list
end
local k, a = 1, 1
while k <= #KEYS do
  local req, tok, sum, slots = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local periods, newest = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local requests, entries, freed = words(ARGV[a + 2]), words(ARGV[a + 3]), tonumber(ARGV[a + 5])
  if #requests > 0 then
    redis.call('ZADD', req, unpack(requests))
    redis.call('EXPIRE', req, WINDOW_TTL)
  end
  if #entries > 0 then
    if redis.call('EXISTS', tok) == 0 then redis.call('DEL', sum) end
    redis.call('ZADD', tok, unpack(entries))
    redis.call('INCRBY', sum, ARGV[a + 4])
    redis.call('EXPIRE', tok, WINDOW_TTL)
    redis.call('EXPIRE', sum, WINDOW_TTL)
  end
  a = a + 6
  if freed > 0 then
    redis.call('ZREM', slots, unpack(ARGV, a, a + freed - 1))
    a = a + freed
  end
  trim(req, tok, sum, at(newest - WINDOW - MARGIN))
  for p = 1, periods do
    local spend, release = KEYS[k + 3 + p], tonumber(ARGV[a])
    -- Releases are never negative, so one clamp of their sum equals clamping after each.
    local held = tonumber(redis.call('HGET', spend, 'reserved') or '0') - release
    if held < 0 then held = 0 end
    redis.call('HSET', spend, 'reserved', int(held))
    redis.call('HINCRBY', spend, 'spent', ARGV[a + 1])
    if tonumber(ARGV[a + 2]) > 0 then redis.call('EXPIRE', spend, ARGV[a + 2]) end
    a = a + 3
  end
  k = k + 4 + periods
end
return 0
"""

# KEYS: req, tok, toksum, slots, spend. ARGV: now, has a period (1/0).
# Returns "requests tokens in-flight spent reserved".
_LUA_USAGE = _LUA_COMMON + """
local now = tonumber(ARGV[1])
local cutoff = at(now - WINDOW)
local requests = redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf')
local tokens = window_tokens(KEYS[2], KEYS[3], cutoff)
local in_flight = redis.call('ZCOUNT', KEYS[4], '(' .. at(now - LEASE), '+inf')
local spent, reserved = 0, 0
if ARGV[2] == '1' then spent, reserved = spend_of(KEYS[5]) end
return table.concat({int(requests), int(tokens), int(in_flight), int(spent), int(reserved)}, ' ')
"""


class _Script:
    """A Lua script's text and the SHA1 that EVALSHA names it by."""

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest().encode()

    def call(self, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        """Return the EVALSHA command running the script (Redis keeps it once EVAL has run it)."""
        return _pack(b"EVALSHA", self.sha, len(keys), *keys, *args)

    def load_and_call(self, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        """Return the EVAL command sending the script itself, for a Redis that does not have it."""
        return _pack(b"EVAL", self.text, len(keys), *keys, *args)


_ADMIT = _Script(_LUA_ADMIT)
_PUT = _Script(_LUA_PUT)
_RESERVE = _Script(_LUA_RESERVE)
_FINISH = _Script(_LUA_FINISH)
_USAGE = _Script(_LUA_USAGE)


class _Link:
    """One connection: opened by redis-py (which knows every URL form and handshake), then spoken on directly.

    Its replies are RESP2's (no HELLO 3 is sent): an error reply comes back as a ResponseError value, so every
    reply of a pipelined batch is read before any is raised.
    """

    def __init__(self, connection: Any) -> None:
        """Connect (within the store's timeouts, no retry) and take the socket redis-py opened."""
        connection.connect()
        self._connection = connection
        sock: socket.socket | None = getattr(connection, "_sock", None)  # redis-py keeps its open socket here
        if sock is None:
            connection.disconnect()
            raise redis.ConnectionError("the Redis connection has no socket after connecting")
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buffer = bytearray()
        self._pos = 0

    def quiet(self) -> bool:
        """Tell whether the idle connection is still open with nothing to read (a closed one reads as EOF)."""
        return not self._poll.poll(0)

    def exchange(self, commands: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write and return their replies, in order."""
        self._sock.sendall(commands)
        answers = [self._reply() for _ in range(replies)]
        if self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        return answers

    def close(self) -> None:
        """Close the connection (redis-py leaves a forked parent's socket to the parent)."""
        self._connection.disconnect()

    def _reply(self) -> Any:
        """Read one reply: a string, an int, None, a list of replies, or a ResponseError."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._bulk(size).decode()
        if kind == b":":
            return int(rest)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return redis.ResponseError(rest.decode(errors="replace"))
        raise redis.ConnectionError(f"unexpected reply from Redis: {bytes(line[:40])!r}")

    def _line(self) -> bytearray:
        """Return the next line, without its CRLF."""
        while True:
            end = self._buffer.find(b"\r\n", self._pos)
            if end >= 0:
                line = self._buffer[self._pos:end]
                self._pos = end + 2
                return line
            self._fill()

    def _bulk(self, size: int) -> bytearray:
        """Return the next `size` bytes, skipping the CRLF after them."""
        while len(self._buffer) - self._pos < size + 2:
            self._fill()
        data = self._buffer[self._pos:self._pos + size]
        self._pos += size + 2
        return data

    def _fill(self) -> None:
        """Read more from the socket (within its timeout), dropping what was read already."""
        chunk = self._sock.recv(READ_SIZE)
        if not chunk:
            raise redis.ConnectionError("Redis closed the connection")
        if self._pos:
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += chunk


class RedisStateStore:
    """Keys and counters in one Redis, shared by every worker of every host that names it."""

    def __init__(self, url: str, prefix: str = "portico:state:", *, connect_timeout_s: float = 1.0,
                 op_timeout_s: float = 2.0) -> None:
        """Read the URL (no connection is made yet); every operation waits at most op_timeout_s."""
        self._prefix = prefix
        self._safe_url = redact_url(url)
        self._password = _password_of(url)
        try:
            # The pool only reads the URL: which connection class, and its settings. Connections are the store's.
            pool = redis.ConnectionPool.from_url(
                url, socket_connect_timeout=connect_timeout_s, socket_timeout=op_timeout_s, protocol=2,
                # No retries: a script that ran but whose answer was lost would count twice.
                retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise StateUnavailable(f"state store: cannot use the Redis URL {self._safe_url} "
                                   f"({self._scrub(str(exc))})") from None
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._idle: list[_Link] = []
        self._pid = os.getpid()

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a managed key (by id), and move the version on in the same script."""
        keys = (self._prefix + "keys", self._prefix + "version")
        args = (record.id, compact(record.to_store()), secrets.randbelow(VERSION_START_RANGE))
        self._run("storing a key", _PUT, keys, args)

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Return a managed key by id, or None."""
        data = self._command("reading a key", b"HGET", self._prefix + "keys", key_id)
        return None if data is None else self._record(key_id, data)

    def list_keys(self) -> list[KeyRecord]:
        """Return every managed key, oldest first."""
        flat = self._command("reading the keys", b"HGETALL", self._prefix + "keys")
        records = [self._record(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        return sorted(records, key=lambda record: (record.created_at, record.id))

    def version(self) -> int:
        """Return the key set's version counter (0 before the first put)."""
        value = self._command("reading the keys' version", b"GET", self._prefix + "version")
        return int(value) if value is not None else 0

    def admit(self, key_id: str, slot: str, now: float, limits: Limits, budget: BudgetAsk | None = None) -> Admission:
        """Admit one call under `limits` and reserve from its budget, or refuse it naming the limit; one script."""
        keys = self._window_keys(key_id)
        args: list[str | int] = [repr(float(now)), _nonce(), slot, limits.rpm or 0, limits.tpm or 0,
                                 limits.max_concurrent or 0]
        if budget is not None:
            keys.append(self._spend_key(key_id, budget.period))
            args += [_nano(budget.usd), _nano(budget.budget_usd), _period_ttl(budget.period)]
        admitted, limit, oldest, requests, tokens, spent, held = self._run("admitting a call", _ADMIT, keys,
                                                                           args).split(" ")
        reservation = None
        if budget is not None and (admitted == "1" or limit == "budget"):
            reservation = Reservation(admitted == "1", spent_usd=int(spent) / NANO, reserved_usd=int(held) / NANO)
        if admitted == "1":
            return Admission(True, requests=int(requests), tokens=int(tokens), reservation=reservation)
        if limit == "budget":
            retry = 0
        elif oldest == "-":
            retry = 1
        else:
            retry = max(1, math.ceil(float(oldest) + WINDOW_S - now))
        return Admission(False, limit=limit, retry_after_s=retry, requests=int(requests), tokens=int(tokens),
                         reservation=reservation)

    def reserve(self, key_id: str, period: str, usd: float, budget_usd: float) -> Reservation:
        """Reserve `usd` of the period's budget unless spent + reserved already reach `budget_usd`; atomically."""
        args = (_nano(usd), _nano(budget_usd), _period_ttl(period))
        reserved, spent, held = self._run("reserving budget", _RESERVE, [self._spend_key(key_id, period)],
                                          args).split(" ")
        return Reservation(reserved == "1", spent_usd=int(spent) / NANO, reserved_usd=int(held) / NANO)

    def finish(self, calls: Sequence[Finished]) -> None:
        """Record finished calls: a script per FINISH_CHUNK calls, every chunk in one round trip."""
        if calls:
            runs = [self._finish_args(calls[start:start + FINISH_CHUNK])
                    for start in range(0, len(calls), FINISH_CHUNK)]
            self._run_all("recording finished calls", _FINISH, runs)

    def usage(self, key_id: str, now: float, period: str | None) -> KeyUsage:
        """Return a key's use: spend and reservations in `period` (None: 0), requests, tokens and slots now."""
        keys = [*self._window_keys(key_id), self._spend_key(key_id, period or "-")]
        args = (repr(float(now)), "1" if period else "0")
        requests, tokens, in_flight, spent, reserved = self._run("reading a key's usage", _USAGE, keys,
                                                                 args).split(" ")
        return KeyUsage(spent_usd=int(spent) / NANO, reserved_usd=int(reserved) / NANO, requests=int(requests),
                        tokens=int(tokens), in_flight=int(in_flight))

    def close(self) -> None:
        """Close the idle connections; never raise."""
        while self._idle:
            try:
                self._idle.pop().close()
            except (IndexError, *_FAILURES):
                pass

    # -- talking to Redis ------------------------------------------------------------------------------

    def _command(self, doing: str, *command: bytes | str) -> Any:
        """Run one plain command and return its reply."""
        return self._check(doing, self._send(doing, _pack(*command), 1))[0]

    def _run(self, doing: str, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run one script and return its reply."""
        return self._run_all(doing, script, [(keys, args)])[0]

    def _run_all(self, doing: str, script: _Script,
                 runs: Sequence[tuple[Sequence[str], Sequence[str | int]]]) -> list[Any]:
        """Run a script once per (keys, args), all in one round trip, and return the replies in order."""
        replies = self._send(doing, b"".join(script.call(keys, args) for keys, args in runs), len(runs))
        missing = [i for i, reply in enumerate(replies) if _no_script(reply)]
        if missing:
            # Redis restarted or its scripts were flushed: those runs did not happen. EVAL sends the text, and
            # Redis keeps it for the next EVALSHA.
            again = self._send(doing, b"".join(script.load_and_call(*runs[i]) for i in missing), len(missing))
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return self._check(doing, replies)

    def _send(self, doing: str, commands: bytes, replies: int) -> list[Any]:
        """Send packed commands on an idle connection (a new one if none) and read `replies` replies.

        A connection that failed is closed, never used again: what it would read next is not known.
        """
        try:
            link = self._take()
            try:
                answers = link.exchange(commands, replies)
            except BaseException:
                link.close()
                raise
        except (*_FAILURES, ValueError) as exc:  # ValueError: a reply that does not read (not UTF-8, say)
            raise self._unavailable(doing, exc) from None
        self._idle.append(link)
        return answers

    def _take(self) -> _Link:
        """Return an idle connection that is still open and quiet, or a new one."""
        if os.getpid() != self._pid:
            # A forked worker: the parent's connections stay the parent's (a socket shared by two processes
            # would mix their replies).
            self._idle, self._pid = [], os.getpid()
        while True:
            try:
                link = self._idle.pop()
            except IndexError:
                return _Link(self._connection_class(**self._connection_kwargs))
            if link.quiet():
                return link
            link.close()  # closed by Redis (a restart, an idle timeout): never sent on, so nothing was lost

    def _check(self, doing: str, replies: list[Any]) -> list[Any]:
        """Return the replies, or raise StateUnavailable for the first error reply among them."""
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise self._unavailable(doing, reply) from None
        return replies

    def _unavailable(self, doing: str, exc: BaseException) -> StateUnavailable:
        """Return the StateUnavailable for a failure, its text free of the password."""
        # Raised `from None` by callers: the original error's text and its chain stay out of logs (they could
        # hold the URL).
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        return StateUnavailable(f"state store: Redis at {self._safe_url} failed while {doing} ({detail})")

    # -- arguments -------------------------------------------------------------------------------------

    def _finish_args(self, calls: Sequence[Finished]) -> tuple[list[str], list[str | int]]:
        """Return the KEYS and ARGV of one finish script run: the calls grouped by key."""
        groups: dict[str, _KeyFinish] = {}
        for call in calls:
            group = groups.get(call.key_id)
            if group is None:
                group = groups[call.key_id] = _KeyFinish(call.at)
            group.add(call)
        keys: list[str] = []
        args: list[str | int] = []
        for key_id, group in groups.items():
            keys += self._window_keys(key_id)
            keys += [self._spend_key(key_id, period) for period in group.spend]
            args += [len(group.spend), _time(group.newest), " ".join(group.requests), " ".join(group.entries),
                     group.tokens, len(group.slots), *group.slots]
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

    def _record(self, key_id: str, data: str) -> KeyRecord:
        """Return the KeyRecord stored as JSON, or raise StateUnavailable naming the unreadable key."""
        try:
            return KeyRecord.from_store(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateUnavailable(f"state store: the key {key_id!r} in Redis at {self._safe_url} cannot be read "
                                   f"({type(exc).__name__}: {exc})") from None

    def _scrub(self, text: str) -> str:
        """Return text with the URL's password replaced by ***."""
        return text.replace(self._password, "***") if self._password else text


class _KeyFinish:
    """One key's share of a finish batch, as the finish script takes it."""

    def __init__(self, at: float) -> None:
        self.newest = at
        self.requests: list[str] = []  # "time nonce" of each request to count
        self.entries: list[str] = []  # "time nonce:tokens" of each token entry
        self.tokens = 0
        self.slots: list[str] = []
        self.spend: dict[str, list[int]] = {}  # period -> [nano-dollars released, nano-dollars spent]

    def add(self, call: Finished) -> None:
        """Add one finished call."""
        if call.at > self.newest:
            self.newest = call.at
        tokens = int(call.tokens)
        if not call.counted or tokens > 0:
            when, nonce = _time(call.at), _nonce()
            if not call.counted:
                self.requests.append(f"{when} {nonce}")
            if tokens > 0:
                self.entries.append(f"{when} {nonce}:{tokens}")
                self.tokens += tokens
        if call.slot:
            self.slots.append(call.slot)
        if call.period and (call.reserved_usd > 0 or call.cost_usd):
            totals = self.spend.setdefault(call.period, [0, 0])
            totals[0] += _nano(max(0.0, call.reserved_usd))
            totals[1] += _nano(call.cost_usd)


def _pack(*args: bytes | str | int) -> bytes:
    """Return a command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _no_script(reply: Any) -> bool:
    """Tell whether a reply says Redis does not have the script EVALSHA named."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT")


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
