"""The SQLite state store: one file in WAL mode, shared by the gunicorn workers (and their threads) of one host.

Every thread has its own connection (a connection is never shared between threads, nor carried across fork);
admit, reserve and finish each run in one BEGIN IMMEDIATE transaction, which takes the file's write lock up
front, so counters are exact across processes. Money is kept in whole nano-dollars, so that ten reservations
of 0.1 against a budget of 1.0 add up to the budget exactly (floats would let an eleventh in).

admit is on the request path, so it is one read and one write statement: all of a key's counters are rows of
one table, side by side in its b-tree (a commit usually writes a single page), and its rate window is kept in
buckets of one second with running totals. Old buckets are pruned, and the WAL is checkpointed, by `finish`,
which runs on each worker's background writer thread (tally.py): SQLite's own checkpoint would run in whichever
request's commit filled the WAL, and its fsync costs milliseconds.
"""

from __future__ import annotations

import fcntl
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
from typing import Any, TypeVar

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

log = logging.getLogger("app.governance")
T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
# Opening a new file: how long to keep retrying while other processes hold it to create the same schema.
CREATE_RETRY_S = 10.0
NANO = 1_000_000_000  # nano-dollars per dollar
SCHEMA_VERSION = 2
# A key's expired buckets (and lapsed slots) are deleted by finish at most every PRUNE_S per process, or by
# admit itself once PRUNE_AT expired buckets have piled up (a process whose writer thread never runs).
PRUNE_S = 5.0
PRUNE_AT = 16
# The WAL is checkpointed by finish once this process has committed CHECKPOINT_WRITES writes since its last
# checkpoint (SQLite's own default is 1000 pages); when the WAL then starts over, SQLite cuts the file back to
# WAL_KEEP_BYTES. A process whose finish does not run (so it never checkpoints) looks at the file's size every
# WAL_CHECK_WRITES writes, and checkpoints on the request path past WAL_MAX_BYTES: the WAL is bounded either way.
CHECKPOINT_WRITES = 1000
WAL_CHECK_WRITES = 4 * CHECKPOINT_WRITES
WAL_KEEP_BYTES = 16 << 20
WAL_MAX_BYTES = 64 << 20

# Row names in `counters` besides the buckets, whose names are integers (SQLite sorts integers before any
# text, so a key's newest bucket, its totals and its spend are neighbours, usually on one page).
TOTALS = ""  # a, b: the requests and tokens of all the key's buckets
PERIOD = "p:"  # + a budget period: a = spent, b = reserved (nano-dollars)
SLOT = "s:"  # + a slot: a call in flight since `at`

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0)",
    "CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS keys_created ON keys (created_at)",
    # Every counter of a key; `name` has no type, so integers stay integers and text stays text. A bucket is
    # named by its epoch second: a = requests and b = tokens counted in that second, at = the latest of them.
    # It leaves the window when that latest one does: an entry never leaves early, and at most 1 s late.
    """CREATE TABLE IF NOT EXISTS counters (
        key_id TEXT NOT NULL, name NOT NULL, a INTEGER NOT NULL, b INTEGER NOT NULL, at REAL NOT NULL,
        PRIMARY KEY (key_id, name)) WITHOUT ROWID""",
)
# Schema 1 kept a row per request or token entry, and spend and slots in tables of their own.
_FROM_V1 = (
    "INSERT INTO counters (key_id, name, a, b, at) SELECT key_id, CAST(at AS INTEGER), SUM(requests), "
    "SUM(tokens), MAX(at) FROM rate_entries GROUP BY key_id, CAST(at AS INTEGER)",
    "INSERT INTO counters (key_id, name, a, b, at) SELECT key_id, '', SUM(requests), SUM(tokens), 0 "
    "FROM rate_entries GROUP BY key_id",
    "INSERT INTO counters (key_id, name, a, b, at) SELECT key_id, 'p:' || period, spent, reserved, 0 FROM spend",
    "INSERT INTO counters (key_id, name, a, b, at) SELECT key_id, 's:' || slot, 0, 0, at FROM slots",
    "DROP TABLE rate_entries",
    "DROP TABLE rate_totals",
    "DROP TABLE spend",
    "DROP TABLE slots",
)

# Adds (a, b) to a row (a missing row counts as zeros), taking neither below 0, and moves its `at` on.
_ADD = ("INSERT INTO counters (key_id, name, a, b, at) VALUES (?1, ?2, MAX(0, ?3), MAX(0, ?4), ?5) "
        "ON CONFLICT (key_id, name) DO UPDATE SET a = MAX(0, a + ?3), b = MAX(0, b + ?4), at = MAX(at, ?5)")
# What admit decides on, in one snapshot: the key's totals; the count and sums of its buckets that left the
# window (name <= ?2: that second or older; at <= ?3: all their entries are out) but were not pruned yet; the
# period's spend and reservations (?4: its row's name); with max_concurrent, the slots held within their lease.
# Nothing bounds the window above: a worker that read its clock just before another's admit committed must
# still count that admit, or two racing calls could both take the last request.
_COUNTS = ("SELECT (SELECT a FROM counters WHERE key_id = ?1 AND name = ''), "
           "(SELECT b FROM counters WHERE key_id = ?1 AND name = ''), COUNT(*), TOTAL(a), TOTAL(b), "
           "(SELECT a FROM counters WHERE key_id = ?1 AND name = ?4), "
           "(SELECT b FROM counters WHERE key_id = ?1 AND name = ?4)")
# Slot rows are the names from SLOT ('s:') up to the next character (';').
_HELD = ", (SELECT COUNT(*) FROM counters WHERE key_id = ?1 AND name >= 's:' AND name < 's;' AND at > ?5)"
_EXPIRED = " FROM counters WHERE key_id = ?1 AND name <= ?2 AND at <= ?3"
_READ_COUNTS = _COUNTS + _EXPIRED
_READ_COUNTS_HELD = _COUNTS + _HELD + _EXPIRED
_IN_WINDOW = "SELECT a, b, at FROM counters WHERE key_id = ? AND name >= ? AND name < '' AND at > ? ORDER BY name"
_PRUNE = "DELETE FROM counters WHERE key_id = ? AND name <= ? AND at <= ? RETURNING a, b"
_PRUNE_SLOTS = "DELETE FROM counters WHERE key_id = ? AND name >= 's:' AND name < 's;' AND at <= ?"
_SPEND = "SELECT a, b FROM counters WHERE key_id = ? AND name = ?"


def _nano(usd: float) -> int:
    """Return dollars as whole nano-dollars."""
    return round(usd * NANO)


def _usd(nano: int) -> float:
    """Return nano-dollars as dollars."""
    return nano / NANO


def _retry_after(at: float, now: float) -> int:
    """Return the whole seconds until an entry made at `at` leaves the window: at least 1, at most a window.

    `at` is inf when the buckets cannot say (the totals disagree with them): a whole window is then safe.
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
        self._writes = 0  # committed by this process since it last checkpointed
        self._pruned: dict[str, float] = {}  # key id: when finish last pruned its buckets (time.monotonic())
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
        self._write(_put_key, record.id, record.created_at, json.dumps(record.to_store(), separators=(",", ":")))

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Return a managed key by id, or None."""
        rows = self._read("SELECT record FROM keys WHERE id = ?", (key_id,))
        return self._record(rows[0][0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        """Return every managed key, oldest first."""
        return [self._record(text) for (text,) in self._read("SELECT record FROM keys ORDER BY created_at, rowid")]

    def version(self) -> int:
        """Return a number that changes whenever a key is put: workers re-read the keys when it does."""
        rows = self._read("SELECT value FROM meta WHERE name = 'version'")
        return int(rows[0][0]) if rows else 0

    # -- counters --------------------------------------------------------------------------------------

    def admit(self, key_id: str, slot: str, now: float, limits: Limits, budget: BudgetAsk | None = None) -> Admission:
        """Admit one call under `limits` (and reserve from its budget), or refuse it naming the limit; atomically."""
        return self._write(_admit, key_id, slot, now, limits, budget)

    def reserve(self, key_id: str, period: str, usd: float, budget_usd: float) -> Reservation:
        """Reserve `usd` of the period's budget unless spent + reserved already reach `budget_usd`; atomically."""
        return self._write(_reserve, key_id, PERIOD + period, _nano(usd), _nano(budget_usd))

    def finish(self, calls: Sequence[Finished]) -> None:
        """Record finished calls in one go: count requests not counted yet, add tokens to the window, free slots,
        release reservations (never below 0) and add costs to the period's spend."""
        # Summed in Python first, so a batch becomes a few row writes: per second's bucket in this loop (written
        # out, as it runs for every call), then per key's totals from the buckets.
        buckets: dict[tuple[str, int], list[Any]] = {}  # (key id, second): [requests, tokens, latest end]
        spends: dict[tuple[str, str], list[int]] = {}  # (key id, period row): [cost, reservation released]
        slots: list[tuple[str, str]] = []
        floor = math.floor
        for call in calls:
            key_id = call.key_id
            requests = 0 if call.counted else 1
            tokens = int(call.tokens) if call.tokens > 0 else 0
            if requests or tokens:
                at = call.at
                bucket = buckets.get((key_id, floor(at)))
                if bucket is None:
                    buckets[(key_id, floor(at))] = [requests, tokens, at]
                else:
                    bucket[0] += requests
                    bucket[1] += tokens
                    bucket[2] = max(bucket[2], at)
            if call.slot is not None:
                slots.append((key_id, SLOT + call.slot))
            if call.period is not None and (call.reserved_usd or call.cost_usd):
                spend = spends.get((key_id, call.period))
                if spend is None:
                    spend = spends[(key_id, call.period)] = [0, 0]
                spend[0] += round(call.cost_usd * NANO)
                spend[1] -= round(call.reserved_usd * NANO)  # taken off, never below 0 (see _ADD)
        if not (buckets or slots or spends):
            return
        rows: list[tuple[str, int | str, int, int, float]] = []
        totals: dict[str, list[Any]] = {}  # key id: [requests, tokens, latest end]
        for (key_id, second), (requests, tokens, at) in buckets.items():
            rows.append((key_id, second, requests, tokens, at))
            total = totals.setdefault(key_id, [0, 0, at])
            total[0] += requests
            total[1] += tokens
            total[2] = max(total[2], at)
        rows += [(key_id, TOTALS, requests, tokens, 0.0) for key_id, (requests, tokens, _) in totals.items()]
        rows += [(key_id, PERIOD + period, cost, freed, 0.0) for (key_id, period), (cost, freed) in spends.items()]
        latest = {key_id: total[2] for key_id, total in totals.items()}
        self._write(_finish, rows, slots, self._due_for_pruning(latest))
        if self._writes >= CHECKPOINT_WRITES:
            self._checkpoint()

    def usage(self, key_id: str, now: float, period: str | None) -> KeyUsage:
        """Return a key's use: spend and reservations in `period` (None: 0), requests, tokens and slots now."""
        # One statement, so one snapshot: the figures agree with each other. Buckets that left the window but
        # were not pruned yet are taken off the totals here, without writing.
        cutoff = now - WINDOW_S
        name = None if period is None else PERIOD + period
        (row,) = self._read(_READ_COUNTS_HELD, (key_id, math.floor(cutoff), cutoff, name, now - SLOT_LEASE_S))
        requests, tokens = _window(row)
        return KeyUsage(spent_usd=_usd(row[5] or 0), reserved_usd=_usd(row[6] or 0), requests=requests,
                        tokens=tokens, in_flight=row[7])

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
        inherited_fd = getattr(self, "_writer_fd", None)
        if inherited_fd is not None:
            os.close(inherited_fd)  # a lock on it would be the parent's lock too: this process opens its own
        self._writer_fd: int | None = None
        self._writer = threading.Lock()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns = []

    def _write(self, work: Callable[..., T], *args: Any) -> T:
        """Run work(connection, *args) in a BEGIN IMMEDIATE transaction (the write lock taken first), committed
        when it returns; now and then, look at the WAL's size."""
        conn = self._connection()
        # Writers queue on a thread lock and an flock of the lock file, which wake the next one at once. Left to
        # SQLite's own busy handler, a writer that finds the file locked sleeps 1, 2, 5 ... ms before it tries
        # again: with a worker's threads and the workers of a host all writing, calls waited on those sleeps.
        with self._writer:
            fd = self._writer_lock()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn, *args)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        # Not exact across threads, which does not matter: it only spaces out checkpoints and looks at the WAL.
        self._writes += 1
        if self._writes % WAL_CHECK_WRITES == 0:
            self._check_wal()
        return result

    def _writer_lock(self) -> int | None:
        """Return this process's descriptor of the lock file beside the store (None if it cannot be opened)."""
        if self._writer_fd is None:
            try:
                self._writer_fd = os.open(self.path + "-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return None  # SQLite's own locking still keeps writes atomic, only slower under contention
        return self._writer_fd

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Return the rows of one read (autocommit: its own snapshot), with SQLite's errors made StateUnavailable."""
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def _due_for_pruning(self, latest: dict[str, float]) -> list[tuple[str, float]]:
        """Return which of these keys (with their latest call's end) finish should prune now."""
        now = time.monotonic()
        if len(self._pruned) > 100_000:
            self._pruned.clear()  # keys come and go; forgetting them costs one early prune each
        due = [(key_id, at) for key_id, at in latest.items() if now - self._pruned.get(key_id, -math.inf) >= PRUNE_S]
        for key_id, _ in due:
            self._pruned[key_id] = now
        return due

    def _check_wal(self) -> None:
        """Checkpoint here if the WAL has grown past WAL_MAX_BYTES (this process's finish has not checkpointed
        for WAL_CHECK_WRITES writes, and no other process's has either)."""
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size > WAL_MAX_BYTES:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the file without waiting for anyone (PASSIVE); a failure is only logged.

        The calls are recorded already, so an error here must not reach the caller (tally.py would record them
        again). Once copied, the next write starts the WAL over.
        """
        self._writes = 0
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, StateUnavailable) as exc:
            log.warning("state store %s: WAL checkpoint failed: %s", self.path, exc)

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
        # Checkpoints are finish's (or _check_wal's), never a request's commit; see the module's docstring.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
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
                if found == 1:
                    for statement in _FROM_V1:
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


def _put_key(conn: sqlite3.Connection, key_id: str, created_at: float, text: str) -> None:
    """Insert or replace a key's row and move the version on."""
    # An upsert, not INSERT OR REPLACE: a replaced key keeps its rowid, so its place among equals.
    conn.execute("INSERT INTO keys (id, created_at, record) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                 "SET created_at = excluded.created_at, record = excluded.record", (key_id, created_at, text))
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")


def _admit(conn: sqlite3.Connection, key_id: str, slot: str, now: float, limits: Limits,
           budget: BudgetAsk | None) -> Admission:
    """Decide one admission from one read of the key's counters and, when admitted, count it in one write."""
    cutoff = now - WINDOW_S
    period = None if budget is None else PERIOD + budget.period
    if limits.max_concurrent is None:
        row = conn.execute(_READ_COUNTS, (key_id, math.floor(cutoff), cutoff, period)).fetchone()
    else:
        row = conn.execute(_READ_COUNTS_HELD, (key_id, math.floor(cutoff), cutoff, period,
                                               now - SLOT_LEASE_S)).fetchone()
    requests, tokens = _window(row)
    if row[2] >= PRUNE_AT:
        _prune(conn, key_id, cutoff)  # finish has not pruned this key for a while: keep this read short
    if limits.rpm is not None and requests >= limits.rpm:
        at = _nth_oldest_request(conn, key_id, cutoff, requests - limits.rpm)
        return Admission(False, "rpm", _retry_after(at, now), requests, tokens)
    if limits.tpm is not None and tokens >= limits.tpm:
        at = _token_bucket_to_expire(conn, key_id, cutoff, tokens, limits.tpm)
        return Admission(False, "tpm", _retry_after(at, now), requests, tokens)
    if limits.max_concurrent is not None and row[7] >= limits.max_concurrent:
        return Admission(False, "max_concurrent", 1, requests, tokens)
    # Admitted unless the budget says no: the request goes into its second's bucket and the totals, the
    # reservation into the period's row, the slot into its own; one statement writes them all.
    writes = [(key_id, math.floor(now), 1, 0, now), (key_id, TOTALS, 1, 0, 0.0)]
    reservation = None
    if budget is not None:
        amount = _nano(budget.usd)
        reservation = _budget(row[5] or 0, row[6] or 0, amount, _nano(budget.budget_usd))
        if not reservation.reserved:
            return Admission(False, "budget", 0, requests, tokens, reservation)
        if amount:
            writes.append((key_id, period, 0, amount, 0.0))
    if limits.max_concurrent is not None:
        writes.append((key_id, SLOT + slot, 0, 0, now))
    conn.executemany(_ADD, writes)
    return Admission(True, None, 0, requests + 1, tokens, reservation)


def _reserve(conn: sqlite3.Connection, key_id: str, name: str, amount: int, budget: int) -> Reservation:
    """Reserve amount (nano-dollars) in the period's row unless its spent + reserved already reach budget."""
    row = conn.execute(_SPEND, (key_id, name)).fetchone()
    spent, reserved = row or (0, 0)
    reservation = _budget(spent, reserved, amount, budget)
    if reservation.reserved and amount:
        conn.execute(_ADD, (key_id, name, 0, amount, 0.0))
    return reservation


def _budget(spent: int, reserved: int, amount: int, budget: int) -> Reservation:
    """Return the answer to a reservation of amount against budget, given the period's spent and reserved."""
    if spent + reserved >= budget:
        return Reservation(False, _usd(spent), _usd(reserved))
    return Reservation(True, _usd(spent), _usd(reserved + amount))


def _finish(conn: sqlite3.Connection, rows: list[tuple[str, int | str, int, int, float]],
            slots: list[tuple[str, str]], prune: list[tuple[str, float]]) -> None:
    """Add finished calls' rows, free their slots, and prune the keys that are due (as of their latest end)."""
    conn.executemany(_ADD, rows)
    if slots:
        conn.executemany("DELETE FROM counters WHERE key_id = ? AND name = ?", slots)
    for key_id, latest in prune:
        _prune(conn, key_id, latest - WINDOW_S)
        conn.execute(_PRUNE_SLOTS, (key_id, latest - SLOT_LEASE_S))


def _window(row: Sequence[Any]) -> tuple[int, int]:
    """Return the requests and tokens in the window: the totals less the buckets that left it (a counts row)."""
    return max(0, (row[0] or 0) - int(row[3])), max(0, (row[1] or 0) - int(row[4]))


def _prune(conn: sqlite3.Connection, key_id: str, cutoff: float) -> None:
    """Delete a key's buckets whose entries were all made at or before cutoff, and take them off its totals."""
    gone = conn.execute(_PRUNE, (key_id, math.floor(cutoff), cutoff)).fetchall()
    if gone:
        conn.execute(_ADD, (key_id, TOTALS, -sum(a for a, _ in gone), -sum(b for _, b in gone), 0.0))


def _nth_oldest_request(conn: sqlite3.Connection, key_id: str, cutoff: float, skip: int) -> float:
    """Return when the bucket holding the request that must leave for one more to fit leaves (skip: how many
    older requests leave before it; 0 when the window holds exactly rpm)."""
    for requests, _, at in conn.execute(_IN_WINDOW, (key_id, math.floor(cutoff), cutoff)):
        skip -= requests
        if skip < 0:
            return float(at)
    return math.inf


def _token_bucket_to_expire(conn: sqlite3.Connection, key_id: str, cutoff: float, tokens: int, tpm: int) -> float:
    """Return when the bucket leaves whose leaving brings the window's tokens under tpm."""
    left = tokens
    for _, used, at in conn.execute(_IN_WINDOW, (key_id, math.floor(cutoff), cutoff)):
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
