"""The SQLite state store: one file in WAL mode, shared by the gunicorn workers (and their threads) of one host.

Every thread has its own connection (a connection is never shared between threads, nor carried across fork);
admit, reserve and finish each run in one BEGIN IMMEDIATE transaction, which takes the file's write lock up
front, so counters are exact across processes. Money is kept in whole nano-dollars, so that ten reservations
of 0.1 against a budget of 1.0 add up to the budget exactly (floats would let an eleventh in).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

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

log = logging.getLogger("app.governance")
T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
# Opening a new file: how long to keep retrying while other processes hold it to create the same schema.
CREATE_RETRY_S = 10.0
NANO = 1_000_000_000  # nano-dollars per dollar
SCHEMA_VERSION = 1

# `rate_entries`: one row per counted request (requests = 1) and per finished call's tokens, pruned as they
# leave the window; `rate_totals` keeps each key's sums of its remaining entries, so admit() reads two numbers
# instead of adding up a window that may hold tens of thousands of rows.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0)",
    "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS keys_created ON keys (created_at)",
    # Without rowid, so a commit writes one b-tree, not a table and its index; `n` (random) only tells apart
    # two entries of a key made at the same instant.
    """CREATE TABLE IF NOT EXISTS rate_entries (
        key_id TEXT NOT NULL, at REAL NOT NULL, n INTEGER NOT NULL, requests INTEGER NOT NULL,
        tokens INTEGER NOT NULL, PRIMARY KEY (key_id, at, n)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rate_totals (
        key_id TEXT PRIMARY KEY, requests INTEGER NOT NULL, tokens INTEGER NOT NULL) WITHOUT ROWID""",
    # No index on `at`: a key holds at most max_concurrent slots (and those of dead workers, until their lease
    # ends), so pruning scans a handful of rows, and every admit writes one b-tree less.
    """CREATE TABLE IF NOT EXISTS slots (
        key_id TEXT NOT NULL, slot TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (key_id, slot)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spend (
        key_id TEXT NOT NULL, period TEXT NOT NULL, spent INTEGER NOT NULL, reserved INTEGER NOT NULL,
        PRIMARY KEY (key_id, period)) WITHOUT ROWID""",
)

# A key's totals and, in the same snapshot, the sums of its entries that have left the window (at <= ?2).
# Nothing bounds the window above: a worker that read its clock just before another's admit committed must
# still count that admit, or two racing calls could both take the last request.
_TOTALS_AND_EXPIRED = (
    "SELECT (SELECT requests FROM rate_totals WHERE key_id = ?1), (SELECT tokens FROM rate_totals WHERE key_id = ?1),"
    " COUNT(*), TOTAL(requests), TOTAL(tokens) FROM rate_entries WHERE key_id = ?1 AND at <= ?2")
_PRUNE_ENTRIES = "DELETE FROM rate_entries WHERE key_id = ? AND at <= ?"
_ADD_TOTALS = ("INSERT INTO rate_totals (key_id, requests, tokens) VALUES (?, ?, ?) ON CONFLICT (key_id) DO UPDATE "
               "SET requests = MAX(0, requests + excluded.requests), tokens = MAX(0, tokens + excluded.tokens)")
_HELD_SLOTS = "SELECT COUNT(*) FROM slots WHERE key_id = ?"
_SPEND = "SELECT spent, reserved FROM spend WHERE key_id = ? AND period = ?"


def _nano(usd: float) -> int:
    """Return dollars as whole nano-dollars."""
    return round(usd * NANO)


def _usd(nano: int) -> float:
    """Return nano-dollars as dollars."""
    return nano / NANO


def _retry_after(at: float, now: float) -> int:
    """Return the whole seconds until an entry made at `at` leaves the window: at least 1, at most a window.

    `at` is inf when the entries cannot say (the totals disagree with them): a whole window is then safe.
    """
    if not math.isfinite(at):
        return int(WINDOW_S)
    return min(max(1, math.ceil(at + WINDOW_S - now)), int(WINDOW_S))


class SQLiteStateStore:
    """The StateStore of one host: keys, rate windows, in-flight slots and spend in one SQLite file."""

    # Per-process state, set again in a forked child (see _forget_parent).
    _pid: int
    _lock: threading.Lock
    _local: threading.local
    _conns: list[tuple[threading.Thread, sqlite3.Connection]]

    def __init__(self, path: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        """Open (creating if needed) the store at path; raise StateUnavailable when the file is unusable."""
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        self._forget_parent()
        with _STORES_LOCK:
            _STORES.add(self)
        try:
            _create_schema(self._connection())
        except (sqlite3.Error, StateUnavailable) as exc:
            self.close()
            raise exc if isinstance(exc, StateUnavailable) else self._unavailable(exc) from None

    # -- keys ------------------------------------------------------------------------------------------

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a managed key (by id), and move the version on."""
        text = json.dumps(record.to_store(), separators=(",", ":"))

        def work(conn: sqlite3.Connection) -> None:
            # An upsert, not INSERT OR REPLACE: a replaced key keeps its rowid, so its place among equals.
            conn.execute("INSERT INTO keys (id, created_at, record) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                         "SET created_at = excluded.created_at, record = excluded.record",
                         (record.id, record.created_at, text))
            conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
        self._write(work)

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Return a managed key by id, or None."""
        row = self._read(lambda conn: conn.execute("SELECT record FROM keys WHERE id = ?", (key_id,)).fetchone())
        return None if row is None else self._record(row[0])

    def list_keys(self) -> list[KeyRecord]:
        """Return every managed key, oldest first."""
        rows = self._read(lambda conn: conn.execute("SELECT record FROM keys ORDER BY created_at, rowid").fetchall())
        return [self._record(text) for (text,) in rows]

    def version(self) -> int:
        """Return a number that changes whenever a key is put: workers re-read the keys when it does."""
        row = self._read(lambda conn: conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone())
        return int(row[0]) if row is not None else 0

    # -- counters --------------------------------------------------------------------------------------

    def admit(self, key_id: str, slot: str, now: float, limits: Limits) -> Admission:
        """Admit one call under `limits`, or refuse it naming the limit; atomically."""
        def work(conn: sqlite3.Connection) -> Admission:
            requests, tokens, pruned = _prune(conn, key_id, now - WINDOW_S)
            answer = _decide(conn, key_id, now, limits, requests, tokens)
            if answer.admitted:
                if limits.max_concurrent is not None:
                    conn.execute("INSERT OR REPLACE INTO slots (key_id, slot, at) VALUES (?, ?, ?)",
                                 (key_id, slot, now))
                conn.execute("INSERT INTO rate_entries (key_id, at, n, requests, tokens) VALUES (?, ?, random(), 1, 0)",
                             (key_id, now))
                conn.execute(_ADD_TOTALS, (key_id, 1 - pruned[0], -pruned[1]))
            elif pruned != (0, 0):
                conn.execute(_ADD_TOTALS, (key_id, -pruned[0], -pruned[1]))
            return answer
        return self._write(work)

    def reserve(self, key_id: str, period: str, usd: float, budget_usd: float) -> Reservation:
        """Reserve `usd` of the period's budget unless spent + reserved already reach `budget_usd`; atomically."""
        amount, budget = _nano(usd), _nano(budget_usd)

        def work(conn: sqlite3.Connection) -> Reservation:
            row = conn.execute(_SPEND, (key_id, period)).fetchone()
            spent, reserved = row if row is not None else (0, 0)
            if spent + reserved >= budget:
                return Reservation(False, _usd(spent), _usd(reserved))
            if amount:
                conn.execute("INSERT INTO spend (key_id, period, spent, reserved) VALUES (?, ?, 0, ?) "
                             "ON CONFLICT (key_id, period) DO UPDATE SET reserved = reserved + excluded.reserved",
                             (key_id, period, amount))
            return Reservation(True, _usd(spent), _usd(reserved + amount))
        return self._write(work)

    def finish(self, calls: Sequence[Finished]) -> None:
        """Record finished calls in one go: count requests not counted yet, add tokens to the window, free slots,
        release reservations (never below 0) and add costs to the period's spend."""
        entries: list[tuple[str, float, int, int]] = []
        added: dict[str, list[float]] = {}  # per key: requests, tokens, latest end
        slots: list[tuple[str, str]] = []
        spends: list[tuple[str, str, int, int]] = []
        for call in calls:
            tokens = max(int(call.tokens), 0)
            if not call.counted or tokens:
                requests = 0 if call.counted else 1
                entries.append((call.key_id, call.at, requests, tokens))
                sums = added.setdefault(call.key_id, [0, 0, call.at])
                sums[0] += requests
                sums[1] += tokens
                sums[2] = max(sums[2], call.at)
            if call.slot is not None:
                slots.append((call.key_id, call.slot))
            if call.period is not None and (call.reserved_usd or call.cost_usd):
                spends.append((call.key_id, call.period, _nano(call.cost_usd), _nano(call.reserved_usd)))
        if not (entries or slots or spends):
            return

        def work(conn: sqlite3.Connection) -> None:
            if entries:
                conn.executemany("INSERT INTO rate_entries (key_id, at, n, requests, tokens) "
                                 "VALUES (?, ?, random(), ?, ?)", entries)
                for key_id, (requests, tokens, latest) in added.items():
                    # Keys limited by a budget alone never pass through admit(): their old entries go here.
                    _, _, pruned = _prune(conn, key_id, latest - WINDOW_S)
                    conn.execute(_ADD_TOTALS, (key_id, int(requests) - pruned[0], int(tokens) - pruned[1]))
            if slots:
                conn.executemany("DELETE FROM slots WHERE key_id = ? AND slot = ?", slots)
            if spends:
                conn.executemany("INSERT INTO spend (key_id, period, spent, reserved) VALUES (?, ?, ?, 0) "
                                 "ON CONFLICT (key_id, period) DO UPDATE "
                                 "SET spent = spent + excluded.spent, reserved = MAX(0, reserved - ?)", spends)
        self._write(work)

    def usage(self, key_id: str, now: float, period: str | None) -> KeyUsage:
        """Return a key's use: spend and reservations in `period` (None: 0), requests, tokens and slots now."""
        # One statement, so one snapshot: the figures agree with each other. Entries that left the window but
        # were not pruned yet are taken off the totals here, without writing.
        sql = ("SELECT (SELECT requests FROM rate_totals WHERE key_id = ?1), "
               "(SELECT tokens FROM rate_totals WHERE key_id = ?1), "
               "(SELECT TOTAL(requests) FROM rate_entries WHERE key_id = ?1 AND at <= ?2), "
               "(SELECT TOTAL(tokens) FROM rate_entries WHERE key_id = ?1 AND at <= ?2), "
               "(SELECT COUNT(*) FROM slots WHERE key_id = ?1 AND at > ?3), "
               "(SELECT spent FROM spend WHERE key_id = ?1 AND period = ?4), "
               "(SELECT reserved FROM spend WHERE key_id = ?1 AND period = ?4)")
        params = (key_id, now - WINDOW_S, now - SLOT_LEASE_S, period)
        requests, tokens, old_requests, old_tokens, in_flight, spent, reserved = self._read(
            lambda conn: conn.execute(sql, params).fetchone())
        return KeyUsage(spent_usd=_usd(spent or 0), reserved_usd=_usd(reserved or 0),
                        requests=max(0, (requests or 0) - int(old_requests)),
                        tokens=max(0, (tokens or 0) - int(old_tokens)), in_flight=in_flight)

    def close(self) -> None:
        """Release connections; the store is not used afterwards.

        Closes this thread's connection and those of threads that ended; another live thread's connection is
        left alone (closing it under a statement it is running is not safe) and goes with its process.
        """
        self._closed = True
        with _STORES_LOCK:
            _STORES.discard(self)
        pid = os.getpid()
        if self._pid != pid:
            return  # nothing of this process was opened yet; the inherited connections are never touched
        current = threading.current_thread()
        with self._lock:
            # This thread's connection, and those of threads that have ended; a live thread's stays as it is.
            closing = [conn for thread, conn in self._conns if thread is current or not thread.is_alive()]
            self._conns = [(thread, conn) for thread, conn in self._conns if not any(conn is c for c in closing)]
        self._local.__dict__.clear()
        for conn in closing:
            conn.close()

    # -- connections -----------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use in this thread and process."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if self._closed:
            raise StateUnavailable(f"state store {self.path}: used after close()")
        if self._pid != os.getpid():
            self._forget_parent()  # forked without the fork hook (it runs for os.fork only): same as there
            local = self._local
        try:
            conn = _connect(self.path, self._busy_timeout_s)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        current = threading.current_thread()
        with self._lock:
            # A thread that ended left its connection behind; nobody uses it any more.
            ended = [old for thread, old in self._conns if not thread.is_alive()]
            self._conns = [(thread, old) for thread, old in self._conns if thread.is_alive()]
            self._conns.append((current, conn))
        for old in ended:
            old.close()
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _forget_parent(self) -> None:
        """Start this process's connections afresh; those opened before fork are kept, unused, never closed.

        Closing a connection inherited through fork could release (or checkpoint through) the parent's locks
        and WAL: it stays referenced until the process ends.
        """
        inherited = getattr(self, "_conns", [])
        _INHERITED.extend(conn for _, conn in inherited)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns = []

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run work in a BEGIN IMMEDIATE transaction (the write lock taken first), committed when it returns."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        return result

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run one read (autocommit: its own snapshot), with SQLite's errors made StateUnavailable."""
        conn = self._connection()
        try:
            return work(conn)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def _record(self, text: str) -> KeyRecord:
        """Return the key a row holds; a row that is not a key record makes the store unavailable."""
        try:
            return KeyRecord.from_store(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise StateUnavailable(f"state store {self.path}: a key record cannot be read ({exc})") from None

    def _unavailable(self, exc: BaseException) -> StateUnavailable:
        """Return the StateUnavailable saying, in one line, what is wrong with the file."""
        return StateUnavailable(f"state store {self.path}: {describe(self.path, exc, self._busy_timeout_s)}")


def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open path in autocommit mode (transactions are begun explicitly) with the busy timeout and pragmas."""
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        # SQLite would only say "unable to open database file".
        raise sqlite3.OperationalError("directory missing")
    # check_same_thread=False only so that the connection of a thread that ended can be closed by another.
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits, a crash none.
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL and create the tables, retrying while other processes do the same at once."""
    deadline = time.monotonic() + CREATE_RETRY_S
    delay = 0.005
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                log.warning("state store: the file stays in %s journal mode (WAL is not supported here)", mode)
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found > SCHEMA_VERSION:
                    raise sqlite3.OperationalError(f"schema version {found} is newer than this gateway's "
                                                   f"{SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    conn.execute(statement)
                if found != SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.2)


def _prune(conn: sqlite3.Connection, key_id: str, until: float) -> tuple[int, int, tuple[int, int]]:
    """Delete a key's entries made at or before `until`; return its requests and tokens left in the window and
    what was deleted (requests, tokens), which the caller takes off rate_totals in the same transaction."""
    total_requests, total_tokens, expired, old_requests, old_tokens = conn.execute(
        _TOTALS_AND_EXPIRED, (key_id, until)).fetchone()
    if expired:
        conn.execute(_PRUNE_ENTRIES, (key_id, until))
    pruned = (int(old_requests), int(old_tokens))
    return max(0, (total_requests or 0) - pruned[0]), max(0, (total_tokens or 0) - pruned[1]), pruned


def _decide(conn: sqlite3.Connection, key_id: str, now: float, limits: Limits, requests: int,
            tokens: int) -> Admission:
    """Return whether a call fits the window's requests and tokens and the key's free slots."""
    if limits.rpm is not None and requests >= limits.rpm:
        at = _nth_oldest_request(conn, key_id, requests - limits.rpm)
        return Admission(False, "rpm", _retry_after(at, now), requests, tokens)
    if limits.tpm is not None and tokens >= limits.tpm:
        at = _token_entry_to_expire(conn, key_id, tokens, limits.tpm)
        return Admission(False, "tpm", _retry_after(at, now), requests, tokens)
    if limits.max_concurrent is not None:
        # A slot older than its lease belongs to a call whose worker died: it stops counting.
        conn.execute("DELETE FROM slots WHERE key_id = ? AND at <= ?", (key_id, now - SLOT_LEASE_S))
        if conn.execute(_HELD_SLOTS, (key_id,)).fetchone()[0] >= limits.max_concurrent:
            return Admission(False, "max_concurrent", 1, requests, tokens)
    return Admission(True, None, 0, requests + 1, tokens)


def _nth_oldest_request(conn: sqlite3.Connection, key_id: str, skip: int) -> float:
    """Return when the request that must leave the window for one more to fit was counted (skip: how many
    older ones leave before it; 0 when the window holds exactly rpm). Older entries were pruned already."""
    row = conn.execute("SELECT at FROM rate_entries WHERE key_id = ? AND requests > 0 ORDER BY at LIMIT 1 OFFSET ?",
                       (key_id, max(skip, 0))).fetchone()
    return float(row[0]) if row is not None else math.inf


def _token_entry_to_expire(conn: sqlite3.Connection, key_id: str, tokens: int, tpm: int) -> float:
    """Return when the token entry was made whose leaving brings the window's tokens under tpm."""
    left = tokens
    for at, used in conn.execute("SELECT at, tokens FROM rate_entries WHERE key_id = ? AND tokens > 0 ORDER BY at",
                                 (key_id,)):
        left -= used
        if left < tpm:
            return float(at)
    return math.inf


def _is_busy(exc: BaseException) -> bool:
    """Tell whether exc is SQLite's 'another connection holds the lock'."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def describe(path: str, exc: BaseException, busy_timeout_s: float = BUSY_TIMEOUT_S) -> str:
    """Return what is wrong with the state file at path, for an operator, in one line."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        if os.path.lexists(directory):
            return f"cannot create the file: {directory} is not a directory"
        return f"cannot create the file: its directory {directory} does not exist"
    if os.path.isdir(path):
        return "is a directory, not a SQLite file"
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return "is not a SQLite database (corrupt, or another kind of file)"
    if name == "SQLITE_CANTOPEN":
        return "cannot open or create the file (is its directory writable?)"
    if name == "SQLITE_READONLY" or name.startswith("SQLITE_READONLY_"):
        return "is read-only (the file, its directory, or its -wal and -shm files must be writable)"
    if _is_busy(exc):
        return f"database is locked: another process held it longer than {busy_timeout_s:g} s"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{text} ({name})" if name else text


# Every open store, so the fork hooks can reset them; the lock keeps the set (and each store) still during fork.
_STORES: weakref.WeakSet[SQLiteStateStore] = weakref.WeakSet()
_STORES_LOCK = threading.Lock()
# Connections a forked child inherited: kept alive, never used, never closed.
_INHERITED: list[sqlite3.Connection] = []


def _before_fork() -> None:
    """Hold the registry and every store's connection list still while os.fork() runs."""
    _STORES_LOCK.acquire()
    for store in list(_STORES):
        store._lock.acquire()


def _after_fork_in_parent() -> None:
    """Release what _before_fork() held."""
    for store in list(_STORES):
        store._lock.release()
    _STORES_LOCK.release()


def _after_fork_in_child() -> None:
    """Give every store fresh per-process state in the child (its locks were held by the parent's fork)."""
    for store in list(_STORES):
        store._forget_parent()
    _STORES_LOCK.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
