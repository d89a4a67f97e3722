"""LogStore across processes: several writers on one file, and a store that crosses fork."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import sys
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from app.logstore import LogStore
from tests.unit.test_logstore import make_record

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
FORK = multiprocessing.get_context("fork")
PROCESSES = 4
PER_PROCESS = 2500


class ProblemLog(logging.Handler):
    """Collect what the store says at WARNING and above (a 'database is locked' that escaped would be there)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _write_in_child(store: LogStore | None, path: str, worker: int, barrier: Barrier, results: Queue[Any]) -> None:
    """Record PER_PROCESS calls as fast as possible after the others are ready, then report."""
    problems = ProblemLog()
    logging.getLogger("app.logstore").addHandler(problems)
    try:
        if store is None:
            store = LogStore(path, retention_days=None, batch_size=50)  # small batches: many competing commits
        barrier.wait(timeout=10)
        for i in range(PER_PROCESS):
            store.record(make_record(f"w{worker}-{i}", key_name=f"worker-{worker}"))
        flushed = store.flush(timeout_s=30)
        store.close()
        results.put({"worker": worker, "flushed": flushed, "dropped": store.dropped, "failed": store.failed,
                     "problems": problems.messages})
    except BaseException:
        results.put({"worker": worker, "crash": traceback.format_exc()})


def _run_writers(path: str, store: LogStore | None) -> list[dict[str, Any]]:
    """Run PROCESSES forked writers at once and return what each reported."""
    barrier = FORK.Barrier(PROCESSES)
    results: Queue[Any] = FORK.Queue()
    children = [FORK.Process(target=_write_in_child, args=(store, path, w, barrier, results))
                for w in range(PROCESSES)]
    for child in children:
        child.start()
    reports = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
        assert child.exitcode == 0
    return sorted(reports, key=lambda r: r["worker"])


def _assert_all_rows_once(path: str) -> None:
    conn = sqlite3.connect(path)
    total, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT trace_id) FROM requests").fetchone()
    per_worker = dict(conn.execute("SELECT key_name, COUNT(*) FROM requests GROUP BY key_name").fetchall())
    conn.close()
    assert total == distinct == PROCESSES * PER_PROCESS
    assert per_worker == {f"worker-{w}": PER_PROCESS for w in range(PROCESSES)}


def test_four_processes_each_with_their_own_store(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")  # not there yet: the four also race to create the schema
    reports = _run_writers(path, None)
    for report in reports:
        assert "crash" not in report, report.get("crash")
        assert report == {"worker": report["worker"], "flushed": True, "dropped": 0, "failed": 0, "problems": []}
    _assert_all_rows_once(path)


def test_four_workers_forked_from_a_store_built_before_fork(tmp_path: Path) -> None:
    # gunicorn's preload: the app (and its store) is built in the master, which then forks the workers.
    path = str(tmp_path / "preloaded.sqlite")
    store = LogStore(path, retention_days=None)
    reports = _run_writers(path, store)
    for report in reports:
        assert "crash" not in report, report.get("crash")
        assert (report["flushed"], report["dropped"], report["failed"], report["problems"]) == (True, 0, 0, [])
    _assert_all_rows_once(path)
    assert store.count() == PROCESSES * PER_PROCESS
    store.close()


def _use_inherited_store(store: LogStore, results: Queue[Any]) -> None:
    try:
        store.record(make_record("child-1"))
        store.record(make_record("child-2"))
        flushed = store.flush(timeout_s=10)
        seen = store.count()
        store.close()
        results.put({"flushed": flushed, "seen": seen, "pid": os.getpid()})
    except BaseException:
        results.put({"crash": traceback.format_exc()})


def test_a_store_in_use_before_fork_works_in_the_child_and_stays_intact_in_the_parent(tmp_path: Path) -> None:
    path = str(tmp_path / "fork.sqlite")
    store = LogStore(path, retention_days=None, flush_interval_s=60)
    store.record(make_record("parent-1"))
    assert store.flush()
    assert store.count() == 1  # the parent now has a writer connection and a read connection open
    store.record(make_record("parent-pending"))  # still in the parent's queue at fork time

    results: Queue[Any] = FORK.Queue()
    child = FORK.Process(target=_use_inherited_store, args=(store, results))
    child.start()
    report = results.get(timeout=30)
    child.join(timeout=10)
    assert "crash" not in report, report.get("crash")
    assert child.exitcode == 0
    # The child wrote its own two records, and not the parent's queued one.
    assert report["flushed"] is True and report["seen"] == 3 and report["pid"] != os.getpid()

    # The parent's writer and read connection carry on as if nothing happened.
    assert store.flush()
    store.record(make_record("parent-after"))
    assert store.flush()
    rows = store.query()
    assert sorted(row["trace_id"] for row in rows) == ["child-1", "child-2", "parent-1", "parent-after",
                                                       "parent-pending"]
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
