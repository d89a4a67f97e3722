"""A host-wide response cache: each worker's MemoryCache in front of one SQLite file the workers share."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from app.cache.answer import CachedAnswer, decode_answer, encode_answer
from app.cache.memory import MemoryCache

log = logging.getLogger(__name__)
L1_MAX_AGE_S = 10.0

# Marks a file as this cache's (the header's application_id), so a path pointing at another database is refused
# rather than written into.
APPLICATION_ID = 0x50434331
SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        expires_at REAL NOT NULL,
        size INTEGER NOT NULL,
        value BLOB NOT NULL
    )""",
    # Covers eviction's scan (soonest expiry first, with the sizes) without touching the bodies.
    "CREATE INDEX entries_expiry ON entries (expires_at, size)",
    # The bytes held, kept exact by triggers, so a put learns the total without summing the table.
    "CREATE TABLE total (bytes INTEGER NOT NULL)",
    "INSERT INTO total VALUES (0)",
    "CREATE TRIGGER entries_added AFTER INSERT ON entries BEGIN UPDATE total SET bytes = bytes + NEW.size; END",
    "CREATE TRIGGER entries_removed AFTER DELETE ON entries BEGIN UPDATE total SET bytes = bytes - OLD.size; END",
    "CREATE TRIGGER entries_resized AFTER UPDATE OF size ON entries "
    "BEGIN UPDATE total SET bytes = bytes - OLD.size + NEW.size; END",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_UPSERT = ("INSERT INTO entries (key, expires_at, size, value) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
           "SET expires_at = excluded.expires_at, size = excluded.size, value = excluded.value")

# A cache must not hold a call up: a put waits at most this long for another worker's write, then is dropped.
BUSY_TIMEOUT_MS = 200
# Each worker keeps its hottest answers in memory too (the L1), in a quarter of the file's bound, with the same
# per-entry limit: five workers then hold a little more in memory than the file does, not five times as much.
L1_FRACTION = 4
# Past max_bytes, eviction goes down to this share of it, so it runs once per few puts' worth of bytes, not per put.
EVICT_TO = 0.9
# Rows deleted per eviction transaction: each transaction stays short, so other workers' puts wait little.
EVICT_BATCH_ROWS = 512
# A WAL file emptied by a checkpoint is cut back to this size rather than kept at its peak.
WAL_SIZE_LIMIT = 8 << 20
# No fsync at all: a worker that dies loses nothing (its writes are in the OS already), and only an OS crash or
# power cut can tear the file, which under gunicorn is never reopened (it lives in the run directory each master
# makes afresh). NORMAL's fsyncs cost a put 5-200 ms now and then on a slow disk (measured), and held the write
# lock long enough for other workers' puts to time out. A path that outlives the OS should use NORMAL instead.
SYNCHRONOUS = "OFF"
# Each thread's connection keeps this many KiB of pages: enough for the key index's upper levels (a lookup then
# reads one or two pages more), while 32 threads in 5 workers hold 40 MiB at most rather than SQLite's 2 MiB each.
PAGE_CACHE_KIB = 256
# Tries at checking or creating the file, once per process, while other processes race to create it.
SETUP_ATTEMPTS = 5
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# Connections opened before a fork: SQLite must not use or close them in the child, so the child keeps them here,
# out of reach of the garbage collector, for its whole life (an open file each, no more).
_INHERITED: list[sqlite3.Connection] = []


class FileUnusable(Exception):
    """The path is not a cache file of this version (another database, or a newer schema)."""


class _Connection(sqlite3.Connection):
    """A connection that remembers the process and thread that opened it."""

    pid: int
    thread: threading.Thread


class SharedCache:
    """Answers in this worker's memory (L1) and in a SQLite file shared by every worker of the host (L2).

    Never raises from get, put or close: on any SQLite trouble it warns (at most once per warn interval) and
    serves a miss or drops the put, and the file rests for retry_interval_s after anything but a busy lock.
    """

    def __init__(self, path: str, max_bytes: int, max_entry_bytes: int | None = None, *,
                 clock: Callable[[], float] = time.time, l1_clock: Callable[[], float] = time.monotonic,
                 warn_interval_s: float = 60.0, retry_interval_s: float = 1.0) -> None:
        """Open (or create) the file at path, bounded to max_bytes; answers over max_entry_bytes are not kept."""
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_bytes // 8 if max_entry_bytes is None else max_entry_bytes, max_bytes)
        self._l1 = MemoryCache(max(1, max_bytes // L1_FRACTION), self.max_entry_bytes, clock=l1_clock)
        self._clock = clock  # wall time: expiry stamps are compared by every process that reads the file
        self._warn_interval_s = warn_interval_s
        self._retry_interval_s = retry_interval_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []  # strong references, so a fork never lets the child close them
        self._ready_pid = 0  # the process that last checked the file's schema
        self._skip_until = -math.inf
        self._next_warning_at = -math.inf
        self._closed = False
        # Check (or create) the file now, so a bad path is reported at start-up; the connection is closed again,
        # since the cache may be built in gunicorn's master and must not carry it across fork.
        conn = self._connection()
        if conn is not None:
            self._drop_connection(conn)

    def get(self, key: str) -> CachedAnswer | None:
        """Return the live answer under key from memory, else from the file (then remembered in memory), or None."""
        answer = self._l1.get(key)
        if answer is not None:
            return answer
        conn = self._connection()
        if conn is None:
            return None
        try:
            row = conn.execute("SELECT expires_at, value FROM entries WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._failed(conn, exc)
            return None
        if row is None:
            return None
        remaining = row[0] - self._clock()
        if remaining <= 0:
            return None
        try:
            answer = decode_answer(row[1])
        except (ValueError, KeyError, TypeError) as exc:  # a damaged value: serve a miss
            self._warn(f"response cache: unreadable entry in {self.path} ({exc}); treating it as a miss")
            return None
        # Whole seconds, rounded down, so the copy in memory never outlives the entry in the file.
        # At most L1_MAX_AGE_S in this worker's memory: a force-refresh on another worker reaches this one soon.
        self._l1.put(key, answer, math.floor(min(remaining, L1_MAX_AGE_S)))
        return answer

    def put(self, key: str, answer: CachedAnswer, max_age_s: int) -> None:
        """Store answer for max_age_s seconds in memory and in the file; skip it when too big or short-lived."""
        self._l1.put(key, answer, max_age_s)
        conn = self._connection()
        if conn is None:
            return
        try:
            if max_age_s <= 0 or answer.size > self.max_entry_bytes:
                # The newer answer supersedes the older even when it cannot be kept (a forced refresh must not
                # leave the stale entry to be served).
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                return
            conn.execute(_UPSERT, (key, self._clock() + max_age_s, answer.size, encode_answer(answer)))
            if conn.execute("SELECT bytes FROM total").fetchone()[0] > self.max_bytes:
                self._evict(conn)
        except sqlite3.Error as exc:
            self._failed(conn, exc)

    def close(self) -> None:
        """Drop the entries in memory and close this process's connections to the file; never raise."""
        self._l1.close()
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        pid = os.getpid()
        for conn in connections:
            if conn.pid == pid:
                _close_quietly(conn)
            else:
                _INHERITED.append(conn)

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Delete the entries that expire soonest (expired first) until the total is under EVICT_TO of the bound."""
        target = int(self.max_bytes * EVICT_TO)
        while True:
            # One short transaction per batch; the total is read inside it, since another worker may have evicted.
            conn.execute("BEGIN IMMEDIATE")
            try:
                excess = conn.execute("SELECT bytes FROM total").fetchone()[0] - target
                doomed: list[tuple[int]] = []
                if excess > 0:
                    for row_id, size in conn.execute(
                            "SELECT id, size FROM entries ORDER BY expires_at LIMIT ?", (EVICT_BATCH_ROWS,)).fetchall():
                        doomed.append((row_id,))
                        excess -= size
                        if excess <= 0:
                            break
                    conn.executemany("DELETE FROM entries WHERE id = ?", doomed)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if excess <= 0 or len(doomed) < EVICT_BATCH_ROWS:
                return

    def _connection(self) -> _Connection | None:
        """Return this thread's connection, opened (and the file checked) when needed; None while the file rests."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and conn.pid == pid and not self._closed:
            return conn
        # No connection yet in this thread, or one inherited across fork: the child must open its own.
        self._local.conn = None
        if self._closed or time.monotonic() < self._skip_until:
            return None
        try:
            conn = self._open(pid)
        except (sqlite3.Error, OSError, FileUnusable) as exc:
            self._skip_until = time.monotonic() + self._retry_interval_s
            self._warn(f"response cache: cannot use {self.path} ({_describe(exc)}); "
                       "serving from this worker's memory only until it can")
            return None
        self._local.conn = conn
        return conn

    def _open(self, pid: int) -> _Connection:
        """Open a connection for this thread with the cache's pragmas; check or create the schema once per process."""
        if self._ready_pid != pid:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
        assert isinstance(conn, _Connection)
        conn.pid, conn.thread = pid, threading.current_thread()
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            if self._ready_pid != pid:
                _ensure_schema_retrying(conn)
                self._ready_pid = pid
        except BaseException:
            conn.close()
            raise
        self._keep(conn, pid)
        return conn

    def _keep(self, conn: _Connection, pid: int) -> None:
        """Remember conn for close(); close the connections of threads that have ended, and set aside inherited ones."""
        with self._lock:
            kept: list[_Connection] = []
            for old in self._connections:
                if old.pid != pid:
                    _INHERITED.append(old)
                elif old.thread.is_alive():
                    kept.append(old)
                else:
                    _close_quietly(old)
            kept.append(conn)
            self._connections = kept

    def _drop_connection(self, conn: _Connection) -> None:
        """Forget and close this thread's connection (the next use opens a fresh one)."""
        self._local.conn = None
        with self._lock:
            self._connections = [kept for kept in self._connections if kept is not conn]
        _close_quietly(conn)

    def _failed(self, conn: _Connection, exc: sqlite3.Error) -> None:
        """Warn; unless another worker merely held the lock, reopen the file later (it may have been replaced)."""
        if not _is_busy(exc):
            self._drop_connection(conn)
            self._ready_pid = 0
            self._skip_until = time.monotonic() + self._retry_interval_s
        self._warn(f"response cache: {self.path} failed ({_describe(exc)}); serving a miss")

    def _warn(self, message: str) -> None:
        """Log message as a warning unless one was logged within the warn interval."""
        with self._lock:
            now = time.monotonic()
            if now < self._next_warning_at:
                return
            self._next_warning_at = now + self._warn_interval_s
        log.warning("%s", message)


def _ensure_schema_retrying(conn: sqlite3.Connection) -> None:
    """Run _ensure_schema, again after a short pause while another process holds the file in creating it."""
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        try:
            _ensure_schema(conn)
            return
        except sqlite3.OperationalError as exc:
            # The switch to WAL may fail at once, without waiting out the busy timeout, when another process is
            # making the same switch (SQLite's deadlock avoidance); it is finished within milliseconds.
            if not _is_busy(exc) or attempt == SETUP_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)


def _ensure_schema(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL and create the schema, or check it is this cache's; safe when processes race."""
    identity = _identity(conn)
    if identity[:2] == (APPLICATION_ID, SCHEMA_VERSION):
        return  # the common case: one read, no lock taken
    _check_ours(*identity)  # before anything is written: a file that is not ours stays untouched
    # Setting WAL needs the file to itself for a moment; another process doing the same is waited for.
    if str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() != "wal":
        raise FileUnusable("cannot switch the file to WAL mode")
    conn.execute("BEGIN IMMEDIATE")
    try:
        identity = _identity(conn)  # another process may have created the schema meanwhile
        _check_ours(*identity)
        if identity[0] == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Return the file's application_id, user_version and number of schema objects, read at one moment."""
    row = conn.execute("SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM "
                       "pragma_user_version), (SELECT count(*) FROM sqlite_master)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _check_ours(app_id: int, version: int, objects: int) -> None:
    """Raise FileUnusable unless the file is this cache's, of this version, or still empty."""
    if app_id == 0 and objects == 0:
        return
    if app_id != APPLICATION_ID:
        raise FileUnusable("not a Portico cache file: it holds another database")
    if version != SCHEMA_VERSION:
        raise FileUnusable(f"cache schema version {version}, this gateway reads {SCHEMA_VERSION}")


def _is_busy(exc: BaseException) -> bool:
    """Tell whether exc is SQLite's 'another connection holds the lock'."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _describe(exc: BaseException) -> str:
    """Return the cause of a failure in one line."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_quietly(conn: sqlite3.Connection) -> None:
    """Close conn, ignoring errors (it may be in use by a thread that is failing anyway)."""
    try:
        conn.close()
    except sqlite3.Error:
        pass
