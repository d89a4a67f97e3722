"""LogStore: the request log of one deployment, one SQLite file shared by every gunicorn worker."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from app.logstore import reader
from app.logstore import writer as writer_module
from app.logstore.record import LogRecord
from app.logstore.schema import LogStoreUnavailable, ReadConnection, connect, describe, prepare, retry_busy
from app.logstore.throttle import Throttle
from app.logstore.writer import FlushMarker, Item, Writer

log = logging.getLogger("app.logstore")
T = TypeVar("T")


class LogStore:
    """Record gateway calls without waiting on disk, and answer queries about them.

    Per process: one writer thread with one connection, started by the first record() in that process
    (a store built before gunicorn forks starts afresh in each worker), and one read connection per
    querying thread.

    Serving never depends on the log (docs/security.md): a file that cannot be opened does not stop the
    constructor; records are then dropped and counted (on_drop), queries raise LogStoreUnavailable, and the
    writer tries the file again every writer.REOPEN_EVERY_S until it works.
    """

    # Per-process state, set by _reset_process_state() at construction and again in a forked child.
    _pid: int
    _writer_pid: int | None
    _writer: Writer | None
    _closed: bool
    _queue: deque[Item]
    _wake: threading.Event
    _lock: threading.Lock
    _dropped: int
    _drop_lock: threading.Lock
    _drop_warning: Throttle
    _local: threading.local
    _conns_lock: threading.Lock
    _read_conns: weakref.WeakSet[ReadConnection]
    _fork_keep: list[sqlite3.Connection]

    def __init__(self, path: str, retention_days: int | None = 30, batch_size: int = 500,
                 flush_interval_s: float = 0.2, queue_max: int = 100_000,
                 clock: Callable[[], float] = time.time, on_drop: Callable[[int], None] | None = None) -> None:
        """Open (creating if needed) the log at path; rows older than retention_days are deleted (None: never).

        on_drop is told how many records were lost (queue full, closed, or the file unusable) each time some are.
        """
        if batch_size < 1 or queue_max < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and queue_max must be positive, flush_interval_s above zero")
        if retention_days is not None and retention_days <= 0:
            raise ValueError(f"retention_days must be positive or None, got {retention_days}")
        self.path = path
        self.retention_days = retention_days
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._queue_max = queue_max
        self._clock = clock
        self._on_drop = on_drop
        # Why the file is unusable, until it works (None: it does).
        self.problem: str | None = None
        try:
            prepare(path)
        except LogStoreUnavailable as exc:
            self.problem = str(exc)
            log.warning("request log %s is unusable (%s): serving without it; records are dropped and counted, "
                        "and the file is tried again every %.0f s", path, exc, writer_module.REOPEN_EVERY_S)
        self._reset_process_state()
        with _STORES_LOCK:
            _STORES.add(self)

    # -- writing ---------------------------------------------------------------------------------------

    def record(self, rec: LogRecord) -> None:
        """Queue rec for the writer; O(1), never blocks on disk, never raises; drops (and counts) when full."""
        try:
            if self._writer_pid != os.getpid() and not self._start_writer():
                self._count_drop()
                return
            queue = self._queue
            if len(queue) >= self._queue_max:
                self._count_drop()
                return
            queue.append(rec)
            # Wake the writer only for a full batch; otherwise it comes by itself every flush_interval_s.
            if len(queue) >= self._batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception:  # the request path must never fail because of its log line
            pass

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything this process recorded so far is committed; False on timeout or write errors."""
        self._check_process()
        if self._writer_pid != os.getpid():
            return True  # nothing was recorded in this process (or it was closed, which flushed)
        writer = self._writer
        if writer is None or not writer.alive:
            if not self._start_writer():
                return not self._queue
            writer = self._writer
            assert writer is not None
        marker = FlushMarker(writer.failed)
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(max(timeout_s, 0.0)) and marker.ok

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, stop the writer thread and close this process's connections; later records are dropped."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        flushed = self.flush(timeout_s)
        with self._lock:
            self._closed = True
            self._writer_pid = None
            writer = self._writer  # kept (stopped) for its counters
        if writer is not None and not writer.stop(deadline - time.monotonic()):
            log.warning("request log writer still busy after %.1f s at close", timeout_s)
        lost = sum(1 for item in self._queue if isinstance(item, LogRecord))
        if lost or not flushed:
            log.warning("request log closed before everything was written: %d records still queued, %d failed",
                        lost, self.failed)
        self._queue.clear()
        if lost:
            self._count_drops(lost)
        self._close_read_connections()

    @property
    def dropped(self) -> int:
        """Return how many records this process dropped (queue full, or recorded after close)."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Return how many records this process's writer could not write (malformed, or disk errors)."""
        return self._writer.failed if self._writer is not None else 0

    @property
    def commits(self) -> int:
        """Return how many insert transactions this process's writer committed."""
        return self._writer.commits if self._writer is not None else 0

    @property
    def pending(self) -> int:
        """Return how many records wait in this process's queue."""
        return len(self._queue)

    # -- reading ---------------------------------------------------------------------------------------

    def query(self, *, since: float | None = None, until: float | None = None, key_name: str | None = None,
              provider: str | None = None, status: int | None = None, status_class: str | None = None,
              trace_id: str | None = None, metadata: Mapping[str, str] | None = None,
              limit: int = 100, before_id: int | None = None, client_ip: str | None = None) -> list[dict[str, Any]]:
        """Return matching requests newest first (by id); pass the last id as before_id for the next page."""
        where = reader.list_filters(since=since, until=until, key_name=key_name, provider=provider, status=status,
                                    status_class=status_class, trace_id=trace_id, metadata=metadata,
                                    before_id=before_id, client_ip=client_ip)
        return self._read(lambda conn: reader.list_requests(conn, where, limit), "query")

    def analytics(self, *, since: float, until: float, group_by: str) -> list[dict[str, Any]]:
        """Return per group: requests, errors, p50_ms, p95_ms, token and cost sums for since <= ts < until."""
        reader.group_expression(group_by)  # refuse a bad grouping before touching the database
        return self._read(lambda conn: reader.analytics(conn, since=since, until=until, group_by=group_by),
                          "analytics")

    def count(self) -> int:
        """Return how many requests the log holds (all processes, committed)."""
        return int(self._read(lambda conn: conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0], "count"))

    # -- per-process state -----------------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Start this process's share of the store from nothing: no writer, no queue, no connections."""
        self._pid = os.getpid()
        self._writer_pid = None
        self._writer = None
        self._closed = False
        self._queue = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._drop_warning = Throttle(60.0)
        self._local = threading.local()
        self._conns_lock = threading.Lock()
        self._read_conns = weakref.WeakSet()
        self._fork_keep = []

    def _check_process(self) -> None:
        """Reset the per-process state if we are in a forked child the fork hooks did not see."""
        if self._pid != os.getpid():
            self._reset_process_state()

    def _start_writer(self) -> bool:
        """Start this process's writer if needed; False once the store is closed."""
        self._check_process()
        with self._lock:
            if self._closed:
                return False
            if self._writer is None or not self._writer.alive:
                self._writer = Writer(self.path, self._queue, self._wake, batch_size=self._batch_size,
                                      interval_s=self._flush_interval_s, retention_days=self.retention_days,
                                      clock=self._clock, problem=self.problem, on_failed=self._tell_drops)
                self._writer.start()
            self._writer_pid = self._pid
            return True

    def _count_drop(self) -> None:
        """Count one dropped record."""
        self._count_drops(1)

    def _count_drops(self, count: int) -> None:
        """Count dropped records and warn about drops at most once a minute."""
        with self._drop_lock:
            self._dropped += count
        self._tell_drops(count)
        if self._drop_warning.ready():
            log.warning("request log queue full or closed: %d records dropped so far in this process", self._dropped)

    def _tell_drops(self, count: int) -> None:
        """Pass lost records on to on_drop (the metric); never raise into the request path or the writer."""
        if self._on_drop is not None:
            try:
                self._on_drop(count)
            except Exception:
                pass

    def _read(self, work: Callable[[sqlite3.Connection], T], what: str) -> T:
        """Run work on this thread's read connection; raise LogStoreUnavailable if the file cannot be read."""
        try:
            conn = self._reader()
            return retry_busy(lambda: work(conn), what)
        except (sqlite3.Error, OSError) as exc:
            self._forget_reader()  # the next query opens the file afresh: the disk may be back by then
            raise LogStoreUnavailable(describe(self.path, exc)) from None

    def _forget_reader(self) -> None:
        """Close and drop this thread's read connection, if any."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _reader(self) -> sqlite3.Connection:
        """Return this thread's read connection, opening it on first use (preparing a file that was unusable)."""
        self._check_process()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.problem is not None:
                prepare(self.path)  # raises LogStoreUnavailable while the file is still unusable
                self.problem = None
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            if isinstance(conn, ReadConnection):
                with self._conns_lock:
                    self._read_conns.add(conn)
        return conn

    def _close_read_connections(self) -> None:
        """Close every read connection of this process; threads open new ones if they query again."""
        with self._conns_lock:
            conns = list(self._read_conns)
            self._read_conns = weakref.WeakSet()
            self._local = threading.local()
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # -- fork ------------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """Hold strong references to this process's connections across fork (see _after_fork_in_child)."""
        self._conns_lock.acquire()
        keep: list[sqlite3.Connection] = list(self._read_conns)
        self._fork_keep = keep
        if self._writer is not None and self._writer.conn is not None:
            self._fork_keep.append(self._writer.conn)

    def _after_fork_in_parent(self) -> None:
        """Let go of the references taken for the fork."""
        self._fork_keep = []
        self._conns_lock.release()

    def _after_fork_in_child(self) -> None:
        """Forget the parent's writer, queue and connections: the parent writes its own records."""
        # Closing an inherited SQLite connection in the child can disturb the parent's locks and WAL, so the
        # child keeps them referenced (and unused) for good, including those of threads that fork discarded.
        _INHERITED.extend(self._fork_keep)
        self._reset_process_state()


# Every live store, so the fork hooks can reset them; the lock keeps the set still while fork runs.
_STORES: weakref.WeakSet[LogStore] = weakref.WeakSet()
_STORES_LOCK = threading.Lock()
# Connections a forked child inherited: kept alive, never used, never closed.
_INHERITED: list[sqlite3.Connection] = []


def _before_fork() -> None:
    """Hold the registry and every store's connection list still while os.fork() runs."""
    _STORES_LOCK.acquire()
    for store in list(_STORES):
        store._before_fork()


def _after_fork_in_parent() -> None:
    """Release what _before_fork() held."""
    for store in list(_STORES):
        store._after_fork_in_parent()
    _STORES_LOCK.release()


def _after_fork_in_child() -> None:
    """Give every store a fresh per-process state in the new child."""
    global _STORES_LOCK
    _STORES_LOCK = threading.Lock()
    for store in list(_STORES):
        store._after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
