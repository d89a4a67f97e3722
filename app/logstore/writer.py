"""The background writer: one thread and one connection per process, committing queued records in batches."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable

from app.logstore.record import COLUMNS, LogRecord, Row, to_row
from app.logstore.schema import LogStoreUnavailable, connect, describe, prepare, transaction
from app.logstore.throttle import Throttle

log = logging.getLogger("app.logstore")

INSERT_SQL = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Retention: how often a writer looks for expired rows, and how many it deletes per (short) transaction.
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 1000
# Per pass, so a big backlog of expired rows never holds up inserts for long; the rest waits one wake-up.
PRUNE_MAX_ROUNDS = 20
# While the file cannot be opened, records are dropped (and counted) without touching the disk; it is tried
# again this often, so the log comes back by itself when the disk does (docs/security.md).
REOPEN_EVERY_S = 10.0
_PRUNE_SQL = "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < ? LIMIT ?)"


class FlushMarker:
    """A place in the queue: set once everything queued before it is committed (or given up on)."""

    __slots__ = ("done", "ok", "failed_before")

    def __init__(self, failed_before: int) -> None:
        """Create an unset marker that remembers how many rows had failed when it was queued."""
        self.done = threading.Event()
        self.ok = False
        self.failed_before = failed_before


Item = LogRecord | FlushMarker


class Writer:
    """Drain a queue of records into SQLite: batches of at most batch_size rows, one short transaction each."""

    def __init__(self, path: str, queue: deque[Item], wake: threading.Event, *, batch_size: int,
                 interval_s: float, retention_days: float | None, clock: Callable[[], float],
                 problem: str | None = None, on_failed: Callable[[int], None] | None = None) -> None:
        """Prepare (but do not start) a writer for path that reads queue and sleeps on wake.

        problem: why the file was unusable when the store opened; the writer then prepares it before writing.
        on_failed: told how many records were lost each time some are (for the dropped-records metric).
        """
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.commits = 0
        self.written = 0
        self.failed = 0
        self._queue = queue
        self._wake = wake
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._retention_s = None if retention_days is None else retention_days * 86400.0
        self._clock = clock
        self._next_prune = -math.inf
        self._stopping = False
        self._error_log = Throttle(60.0)
        self._needs_schema = problem is not None
        self._on_failed = on_failed
        self._reopen_at = -math.inf  # the first open is tried at once
        self._open_problem = problem
        self._thread = threading.Thread(target=self._run, name="portico-logstore-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread (a daemon: a stuck disk must never keep the worker from exiting)."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Tell whether the writer thread is running."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to finish what is queued and exit; return whether it did within timeout_s."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(timeout_s, 0.0))
        return not self._thread.is_alive()

    def _run(self) -> None:
        """Sleep until there is a batch, a flush or the interval passed; then drain. Never let an error end it."""
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # a bug here must not silently end logging for the rest of the process
                log.exception("request log writer error")
                self._drop_connection()
            if self._stopping and not self._queue:
                break
        self._drop_connection()

    def _drain(self) -> None:
        """Write batches until the queue is empty, applying retention between batches when it is due."""
        if not self._queue:
            self._maybe_prune()  # an idle gateway still forgets old rows
        while self._queue:
            rows, markers = self._take_batch()
            try:
                if rows:
                    self._write(rows)
                self._maybe_prune()
            finally:
                # Released only now, so a flush also covers a due retention pass; released even after an
                # error, so flush() reports the failure instead of hanging.
                for marker in markers:
                    marker.ok = self.failed == marker.failed_before
                    marker.done.set()

    def _take_batch(self) -> tuple[list[Row], list[FlushMarker]]:
        """Pop up to batch_size records (and any flush markers among them) and turn them into rows."""
        rows: list[Row] = []
        markers: list[FlushMarker] = []
        queue = self._queue
        while len(rows) < self._batch_size:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, FlushMarker):
                markers.append(item)
                continue
            try:
                rows.append(to_row(item))
            except Exception as exc:  # one malformed record must not cost its whole batch
                self._fail(1)
                self._report("request log: skipped a malformed record (%s)", exc)
        return rows, markers

    def _write(self, rows: list[Row]) -> None:
        """Commit rows in one transaction; on failure count them as failed and reopen the connection next time."""
        try:
            transaction(self._connection(), lambda conn: conn.executemany(INSERT_SQL, rows), "insert")
        except Exception as exc:
            self._fail(len(rows))
            self._report("request log %s: could not write %d records, dropped them: %s", self.path, len(rows), exc)
            # The file may have been replaced or emptied under us: check its schema when reopening.
            self._needs_schema = True
            self._drop_connection()
            return
        self.commits += 1
        self.written += len(rows)

    def _maybe_prune(self) -> None:
        """Delete rows older than the retention, in small transactions, at most once per PRUNE_EVERY_S."""
        if self._retention_s is None:
            return
        now = self._clock()
        if now < self._next_prune:
            return
        cutoff = now - self._retention_s
        self._next_prune = now + PRUNE_EVERY_S
        try:
            for _ in range(PRUNE_MAX_ROUNDS):
                deleted = transaction(self._connection(), lambda conn: conn.execute(
                    _PRUNE_SQL, (cutoff, PRUNE_BATCH)).rowcount, "retention")
                if deleted < PRUNE_BATCH:
                    return
            # More expired rows are left: go on at the next wake-up, after the inserts queued meanwhile.
            self._next_prune = now
        except Exception as exc:
            self._report("request log: retention failed: %s", exc)
            self._drop_connection()

    def _connection(self) -> sqlite3.Connection:
        """Return this writer's connection, opening it on first use (in the writer thread, in this process).

        Raise LogStoreUnavailable without touching the disk while a failed open waits for its next try.
        """
        if self.conn is not None:
            return self.conn
        now = time.monotonic()
        if self._open_problem is not None and now < self._reopen_at:
            raise LogStoreUnavailable(self._open_problem)
        try:
            if self._needs_schema:
                prepare(self.path)
                self._needs_schema = False
            self.conn = connect(self.path)
        except Exception as exc:
            self._open_problem = str(exc) if isinstance(exc, LogStoreUnavailable) else describe(self.path, exc)
            self._reopen_at = now + REOPEN_EVERY_S
            self._needs_schema = True
            raise LogStoreUnavailable(self._open_problem) from None
        if self._open_problem is not None:
            self._open_problem = None
            log.warning("request log %s is available again", self.path)
        return self.conn

    def _fail(self, count: int) -> None:
        """Count records lost and tell the owner (the metric); never raise from here."""
        self.failed += count
        if self._on_failed is not None:
            try:
                self._on_failed(count)
            except Exception:  # a metrics problem must not stop the writer
                pass

    def _drop_connection(self) -> None:
        """Close the connection (if any) so the next write starts from a fresh one."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _report(self, message: str, *args: object) -> None:
        """Log a write problem, at most once a minute (a full disk would otherwise log every batch)."""
        if self._error_log.ready():
            log.error(message, *args)
