"""The request-log file: connections, the schema and its migrations, and retries when another process writes."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("app.logstore")

# How long SQLite itself waits on a lock held by another process before it reports SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000
# Our own retries on top of busy_timeout: a busy writer in another worker must never cost rows.
BUSY_ATTEMPTS = 6
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# Each entry upgrades the schema from version i to i + 1; PRAGMA user_version records where a file is.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS requests (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL,
            ts REAL NOT NULL,
            key_name TEXT,
            provider TEXT,
            target_path TEXT,
            method TEXT NOT NULL,
            route TEXT NOT NULL,
            path TEXT NOT NULL,
            status INTEGER NOT NULL,
            upstream_status INTEGER,
            latency_ms REAL NOT NULL,
            upstream_ms REAL,
            retries INTEGER NOT NULL DEFAULT 0,
            cache_status TEXT,
            model TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cache_read_tokens INTEGER,
            cache_write_tokens INTEGER,
            total_tokens INTEGER,
            search_units INTEGER,
            cost_usd REAL,
            unknown_price INTEGER NOT NULL DEFAULT 0,
            metadata TEXT NOT NULL DEFAULT '{}',
            error TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
        "CREATE INDEX IF NOT EXISTS requests_trace_id ON requests (trace_id)",
        "CREATE INDEX IF NOT EXISTS requests_key_name ON requests (key_name)",
        "CREATE INDEX IF NOT EXISTS requests_provider ON requests (provider)",
        "CREATE INDEX IF NOT EXISTS requests_status ON requests (status)",
    ),
    (
        # Every index is written on every logged call. Filters on key, provider and status come with a time
        # range or a newest-first LIMIT, which the ts index and the row order serve; these three cost more
        # on the hot path (about 2 us and their pages at each checkpoint) than they saved a query.
        "DROP INDEX IF EXISTS requests_key_name",
        "DROP INDEX IF EXISTS requests_provider",
        "DROP INDEX IF EXISTS requests_status",
    ),
    (
        # Who called (docs/observability.md, Client address); rows written before stay NULL. No index, for the
        # reason above: a filter on it comes with a time range or a newest-first limit.
        "ALTER TABLE requests ADD COLUMN client_ip TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

T = TypeVar("T")


class LogStoreUnavailable(Exception):
    """The request-log file cannot be created, opened or read; the message says why, in one line."""


class ReadConnection(sqlite3.Connection):
    """A query connection; a subclass only so the store can hold weak references to it."""


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open path in autocommit mode (we issue BEGIN ourselves) with the busy timeout and WAL-friendly pragmas."""
    factory = ReadConnection if readonly else sqlite3.Connection
    # check_same_thread=False only so close() may close another thread's idle read connection;
    # each connection is still used by one thread at a time.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=factory)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        # In WAL mode NORMAL never corrupts; at worst a power cut loses the last commits, not a process crash.
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def is_busy(exc: BaseException) -> bool:
    """Tell whether exc is SQLite's 'another connection holds the lock' (worth retrying)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def retry_busy(work: Callable[[], T], what: str) -> T:
    """Run work, retrying with jittered backoff while SQLite reports the database busy."""
    delay = 0.01
    for attempt in range(1, BUSY_ATTEMPTS + 1):
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or attempt == BUSY_ATTEMPTS:
                raise
            log.info("request log busy during %s (attempt %d), retrying", what, attempt)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 4, 1.0)
    raise AssertionError("unreachable")  # pragma: no cover


def transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], what: str) -> T:
    """Run work inside BEGIN IMMEDIATE ... COMMIT, retried as a whole while the database is busy."""
    def once() -> T:
        # IMMEDIATE takes the write lock up front, so SQLite's busy handler (not a deadlock error) applies.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result
    return retry_busy(once, what)


def ensure_schema(path: str) -> None:
    """Create the file (and its directory), switch it to WAL and bring the schema to SCHEMA_VERSION."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    conn = connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), "switch to WAL")
        transaction(conn, _migrate, "schema migration")
    finally:
        # Closed before returning: the store may be built in gunicorn's master and must not carry it across fork.
        conn.close()


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file has not seen yet (inside the caller's write transaction)."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"request log schema version {current} is newer than this gateway's {SCHEMA_VERSION}")
    for statements in MIGRATIONS[current:]:
        for statement in statements:
            conn.execute(statement)
    if current != SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def prepare(path: str) -> None:
    """Make path a usable request log (ensure_schema); raise LogStoreUnavailable saying why it is not."""
    try:
        ensure_schema(path)
    except Exception as exc:  # whatever the cause, the caller decides between failing and serving without it
        raise LogStoreUnavailable(describe(path, exc)) from None


def describe(path: str, exc: BaseException) -> str:
    """Return what is wrong with the request-log file at path, for an operator, in one line."""
    if isinstance(exc, OSError) and not isinstance(exc, sqlite3.Error):
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.lexists(directory) and not os.path.isdir(directory):
            return f"cannot create the file: {directory} is not a directory"
        return f"cannot create its directory: {exc.strerror or exc} ({exc.filename})"
    if os.path.isdir(path):
        return "is a directory, not a SQLite file"
    if getattr(exc, "sqlite_errorname", None) == "SQLITE_NOTADB":
        return "is not a SQLite database (corrupt, or another kind of file)"
    if getattr(exc, "sqlite_errorname", None) == "SQLITE_CANTOPEN":
        return "cannot open or create the file (does its directory exist, and is it writable?)"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
