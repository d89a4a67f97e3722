"""The SQLite state store: the StateStore contract, and what one file shared by processes and threads must do."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from app.governance import sqlite_store
from app.governance.keys import Limits
from app.governance.sqlite_store import SQLiteStateStore
from app.governance.store import BudgetAsk, Finished, StateUnavailable
from tests.unit.state_contract import StoreContract, record

FORK = multiprocessing.get_context("fork")
PROCESSES = 4
needs_fork = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")


class TestSQLite(StoreContract):
    """The contract, on a fresh file per test; `make_other` opens the same file again (another worker's view)."""

    @pytest.fixture
    def path(self, tmp_path: Path) -> str:
        """Return where this test's state file goes."""
        return str(tmp_path / "state.sqlite")

    @pytest.fixture
    def store(self, path: str) -> Iterator[SQLiteStateStore]:
        """Return an open store on a new file."""
        opened = SQLiteStateStore(path)
        yield opened
        opened.close()

    @pytest.fixture
    def make_other(self, path: str, store: SQLiteStateStore) -> Iterator[Callable[[], SQLiteStateStore]]:
        """Return a function opening a second store on the same file."""
        opened: list[SQLiteStateStore] = []

        def make() -> SQLiteStateStore:
            opened.append(SQLiteStateStore(path))
            return opened[-1]
        yield make
        for other in opened:
            other.close()


# -- across processes and threads --------------------------------------------------------------------------

def _admit_in_child(path: str, worker: int, barrier: Barrier, results: Queue[Any]) -> None:
    """Open a store (racing the others to create the file), then try 100 admits as fast as possible."""
    try:
        barrier.wait(timeout=20)
        store = SQLiteStateStore(path)
        barrier.wait(timeout=20)
        answers = [store.admit("key_shared", f"{worker}-{n}", time.time(), Limits(rpm=100)) for n in range(100)]
        store.close()
        results.put({"worker": worker, "admitted": sum(a.admitted for a in answers),
                     "limits": sorted({a.limit for a in answers if not a.admitted})})
    except BaseException:
        results.put({"worker": worker, "crash": traceback.format_exc()})


def _run_children(target: Callable[..., None], path: str) -> list[dict[str, Any]]:
    """Run PROCESSES forked children of target at once and return what each reported."""
    barrier = FORK.Barrier(PROCESSES)
    results: Queue[Any] = FORK.Queue()
    children = [FORK.Process(target=target, args=(path, w, barrier, results)) for w in range(PROCESSES)]
    for child in children:
        child.start()
    reports = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
        assert child.exitcode == 0
    for report in reports:
        assert "crash" not in report, report["crash"]
    return reports


@needs_fork
def test_four_processes_at_once_admit_exactly_rpm(tmp_path: Path) -> None:
    path = str(tmp_path / "new.sqlite")  # not there yet: the four also race to create it
    reports = _run_children(_admit_in_child, path)
    assert sum(r["admitted"] for r in reports) == 100
    assert all(r["limits"] in ([], ["rpm"]) for r in reports)
    store = SQLiteStateStore(path)
    assert store.usage("key_shared", time.time(), None).requests == 100
    store.close()


def _reserve_in_child(path: str, worker: int, barrier: Barrier, results: Queue[Any]) -> None:
    """Reserve 0.1 at a time from four threads of this process, against a budget of 1.0."""
    try:
        store = SQLiteStateStore(path)
        barrier.wait(timeout=20)
        reserved: list[bool] = []
        start = threading.Barrier(4)

        def reserve() -> None:
            start.wait(timeout=10)
            for _ in range(4):
                reserved.append(store.reserve("key_budget", "total", 0.1, 1.0).reserved)
        threads = [threading.Thread(target=reserve) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        store.close()
        results.put({"worker": worker, "reserved": sum(reserved), "tries": len(reserved)})
    except BaseException:
        results.put({"worker": worker, "crash": traceback.format_exc()})


@needs_fork
def test_concurrent_reservations_never_pass_the_budget(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.sqlite")
    SQLiteStateStore(path).close()
    reports = _run_children(_reserve_in_child, path)
    assert sum(r["tries"] for r in reports) == PROCESSES * 16
    assert sum(r["reserved"] for r in reports) == 10
    store = SQLiteStateStore(path)
    assert store.usage("key_budget", time.time(), "total").reserved_usd == 1.0
    store.close()


def _admit_budget_in_child(path: str, worker: int, barrier: Barrier, results: Queue[Any]) -> None:
    """Admit calls asking 0.1 of a 1.0 budget (rpm far off) from four threads of this process."""
    try:
        store = SQLiteStateStore(path)
        barrier.wait(timeout=20)
        answers: list[str | None] = []
        start = threading.Barrier(4)

        def admit(thread: int) -> None:
            start.wait(timeout=10)
            for n in range(4):
                answer = store.admit("key_budget", f"{worker}-{thread}-{n}", time.time(), Limits(rpm=1000),
                                     BudgetAsk("total", 0.1, 1.0))
                answers.append(answer.limit)
        threads = [threading.Thread(target=admit, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        store.close()
        results.put({"worker": worker, "admitted": answers.count(None), "limits": sorted(set(answers) - {None})})
    except BaseException:
        results.put({"worker": worker, "crash": traceback.format_exc()})


@needs_fork
def test_concurrent_admissions_never_pass_the_budget(tmp_path: Path) -> None:
    path = str(tmp_path / "admit-budget.sqlite")
    SQLiteStateStore(path).close()
    reports = _run_children(_admit_budget_in_child, path)
    assert sum(r["admitted"] for r in reports) == 10
    assert all(r["limits"] in ([], ["budget"]) for r in reports)
    store = SQLiteStateStore(path)
    use = store.usage("key_budget", time.time(), "total")
    assert (use.requests, use.reserved_usd) == (10, 1.0)  # the refused ones were not counted
    store.close()


def test_threads_of_one_process_admit_exactly_rpm(tmp_path: Path) -> None:
    store = SQLiteStateStore(str(tmp_path / "threads.sqlite"))
    admitted: list[bool] = []
    used: list[sqlite3.Connection] = []
    start = threading.Barrier(8)

    def admit(worker: int) -> None:
        start.wait(timeout=10)
        for n in range(30):
            admitted.append(store.admit("key_t", f"{worker}-{n}", time.time(), Limits(rpm=100)).admitted)
        used.append(store._connection())
    threads = [threading.Thread(target=admit, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert (len(admitted), sum(admitted)) == (240, 100)
    # Each thread had its own connection; those of the threads that ended are closed with the store.
    assert len({id(conn) for conn in used}) == 8 and store._connection() not in used
    store.close()
    assert store._conns == []


# -- the window ------------------------------------------------------------------------------------------

def _buckets(store: SQLiteStateStore) -> dict[str, int]:
    """Return how many window buckets each key has in the file."""
    rows = store._connection().execute("SELECT key_id, COUNT(*) FROM counters WHERE name < '' GROUP BY key_id")
    return dict(rows.fetchall())


def test_buckets_that_left_the_window_are_deleted_by_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "PRUNE_S", 0.0)  # every finish prunes the keys it writes
    store, now = SQLiteStateStore(str(tmp_path / "prune.sqlite")), 1_800_000_000.0
    for n in range(5):
        assert store.admit("key_a", f"s{n}", now + n, Limits(rpm=10)).admitted
    store.finish([Finished("key_b", now, counted=False, tokens=10)])
    answer = store.admit("key_a", "late", now + 63.5, Limits(rpm=10))  # the first four are out
    assert (answer.admitted, answer.requests) == (True, 2)
    assert _buckets(store) == {"key_a": 6, "key_b": 1}  # admit leaves them: it only reads past them
    store.finish([Finished("key_a", now + 63.5, counted=True, tokens=1),
                  Finished("key_b", now + 61, counted=True, tokens=5)])
    assert _buckets(store) == {"key_a": 2, "key_b": 1}
    assert (store.usage("key_a", now + 63.5, None).requests, store.usage("key_a", now + 63.5, None).tokens) == (2, 1)
    use = store.usage("key_b", now + 61, None)
    assert (use.requests, use.tokens) == (0, 5)
    store.close()


def test_admit_prunes_when_finish_has_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "PRUNE_AT", 3)
    store, now = SQLiteStateStore(str(tmp_path / "pile.sqlite")), 1_800_000_000.0
    for n in range(4):
        assert store.admit("key_a", f"s{n}", now + n, Limits(rpm=10)).admitted
    assert store.admit("key_a", "x", now + 62, Limits(rpm=10)).requests == 2  # three out: two left, and this one
    assert _buckets(store) == {"key_a": 2}
    assert store.admit("key_a", "y", now + 62.5, Limits(rpm=10)).requests == 3
    store.close()


def test_a_bucket_leaves_with_its_latest_entry(tmp_path: Path) -> None:
    # Beyond the contract: entries are kept per second, and a second's bucket stays until its latest entry
    # leaves. So an entry never leaves early, and at most 1 s late.
    store, now = SQLiteStateStore(str(tmp_path / "second.sqlite")), 1_800_000_000.0
    assert store.admit("key_a", "a", now + 0.2, Limits(rpm=2)).admitted
    assert store.admit("key_a", "b", now + 0.8, Limits(rpm=2)).admitted
    late = store.admit("key_a", "c", now + 60.5, Limits(rpm=2))  # the entry at 0.2 is out, but not its second
    assert (late.admitted, late.limit, late.requests, late.retry_after_s) == (False, "rpm", 2, 1)
    again = store.admit("key_a", "d", now + 60.8, Limits(rpm=2))
    assert (again.admitted, again.requests) == (True, 1)
    store.close()


def test_a_lowered_rpm_waits_for_enough_requests_to_leave(tmp_path: Path) -> None:
    # Beyond the contract: with more requests in the window than rpm now allows, retry_after waits for the
    # request whose leaving makes room, not just the oldest.
    store, now = SQLiteStateStore(str(tmp_path / "lowered.sqlite")), 1_800_000_000.0
    for n in range(3):
        assert store.admit("key_a", f"s{n}", now + 10 * n, Limits(rpm=5)).admitted
    refused = store.admit("key_a", "x", now + 30, Limits(rpm=2))
    assert (refused.limit, refused.requests, refused.retry_after_s) == ("rpm", 3, 40)
    store.close()


# -- the request path -------------------------------------------------------------------------------------

def test_an_admission_is_one_transaction_of_one_read_and_one_write(tmp_path: Path) -> None:
    store = SQLiteStateStore(str(tmp_path / "one.sqlite"))
    seen: list[str] = []
    store._connection().set_trace_callback(seen.append)
    answer = store.admit("key_a", "a", time.time(), Limits(rpm=5, tpm=100, max_concurrent=2),
                         BudgetAsk("total", 0.1, 1.0))
    store._connection().set_trace_callback(None)
    assert answer.admitted
    # One statement adds to the bucket, the totals, the spend and the slot (SQLite traces it once a row).
    kinds = [sql.split()[0] for sql in seen]
    assert kinds == ["BEGIN", "SELECT", "INSERT", "INSERT", "INSERT", "INSERT", "COMMIT"]
    assert len({sql.split(" VALUES ")[0] for sql in seen if sql.startswith("INSERT")}) == 1
    store.close()


def _frames_written(store: SQLiteStateStore, step: Callable[[], object]) -> int:
    """Return how many pages step() writes to the WAL (checkpointed before, so the WAL starts over)."""
    conn = store._connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    step()
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_an_admission_writes_one_page(tmp_path: Path) -> None:
    # A key's bucket, totals and spend are neighbours in one b-tree: a commit writes a single page (once the
    # second's bucket exists; a new one may split a page once a second).
    store, now = SQLiteStateStore(str(tmp_path / "page.sqlite")), time.time()
    store.finish([Finished(f"key_{n:03d}", now - age, tokens=10, period="total", cost_usd=0.01)
                  for n in range(100) for age in range(60)])
    limits, ask = Limits(rpm=10**6, tpm=10**9), BudgetAsk("total", 0.001, 1000.0)
    assert store.admit("key_050", "a", now, limits, ask).admitted
    assert _frames_written(store, lambda: store.admit("key_050", "b", now, limits, ask)) == 1
    assert _frames_written(store, lambda: store.admit("key_050", "c", now, limits)) == 1
    store.close()


def test_finish_checkpoints_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_WRITES", 20)
    path = str(tmp_path / "wal.sqlite")
    store = SQLiteStateStore(path)
    # Requests never checkpoint: SQLite's automatic checkpoint is off on every connection.
    assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for n in range(600):
        assert store.admit(f"key_{n % 50}", "a", time.time(), Limits(rpm=10**6)).admitted
        if n % 10 == 9:
            store.finish([Finished(f"key_{n % 50}", time.time(), counted=True, tokens=5)])
    # Without checkpoints the WAL would hold some 700 commits (over 2 MB); it starts over instead.
    assert os.path.getsize(path + "-wal") < 400_000
    store.close()


def test_the_wal_stays_bounded_when_finish_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "WAL_CHECK_WRITES", 50)
    monkeypatch.setattr(sqlite_store, "WAL_MAX_BYTES", 200_000)
    path = str(tmp_path / "nofinish.sqlite")
    store = SQLiteStateStore(path)
    for n in range(800):
        assert store.admit(f"key_{n % 50}", "a", time.time(), Limits(rpm=10**6)).admitted
    assert os.path.getsize(path + "-wal") < 600_000  # some 3 MB without the request path's checkpoint
    store.close()


# -- the file ----------------------------------------------------------------------------------------------

def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    path, now = str(tmp_path / "kept.sqlite"), time.time()
    store = SQLiteStateStore(path)
    key = record()
    store.put_key(key)
    assert store.admit(key.id, "a", now, Limits(rpm=5, max_concurrent=3)).admitted
    assert store.reserve(key.id, "2026-05", 0.5, 2.0).reserved
    store.finish([Finished(key.id, now, counted=True, tokens=9, period="2026-05", cost_usd=0.25)])
    version, use = store.version(), store.usage(key.id, now, "2026-05")
    store.close()

    again = SQLiteStateStore(path)
    assert again.get_key(key.id) == key
    assert again.list_keys() == [key]
    assert again.version() == version
    assert again.usage(key.id, now, "2026-05") == use
    assert (use.requests, use.tokens, use.in_flight, use.reserved_usd, use.spent_usd) == (1, 9, 1, 0.5, 0.25)
    again.close()


def test_a_file_of_schema_1_is_carried_over(tmp_path: Path) -> None:
    path, now = str(tmp_path / "v1.sqlite"), time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in (
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
            "INSERT INTO meta VALUES ('version', 7)",
            "CREATE TABLE keys (id TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL)",
            "CREATE TABLE rate_entries (key_id TEXT NOT NULL, at REAL NOT NULL, n INTEGER NOT NULL, "
            "requests INTEGER NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (key_id, at, n)) WITHOUT ROWID",
            "CREATE TABLE rate_totals (key_id TEXT PRIMARY KEY, requests INTEGER NOT NULL, tokens INTEGER NOT NULL)",
            "CREATE TABLE slots (key_id TEXT NOT NULL, slot TEXT NOT NULL, at REAL NOT NULL, "
            "PRIMARY KEY (key_id, slot)) WITHOUT ROWID",
            "CREATE TABLE spend (key_id TEXT NOT NULL, period TEXT NOT NULL, spent INTEGER NOT NULL, "
            "reserved INTEGER NOT NULL, PRIMARY KEY (key_id, period)) WITHOUT ROWID",
            "PRAGMA user_version = 1"):
        conn.execute(statement)
    conn.executemany("INSERT INTO rate_entries VALUES ('key_a', ?, ?, ?, ?)",
                     [(now - 90, 1, 1, 0), (now - 30, 2, 1, 0), (now - 30, 3, 0, 40), (now - 2, 4, 1, 2)])
    conn.execute("INSERT INTO slots VALUES ('key_a', 'w:1', ?)", (now - 5,))
    conn.execute("INSERT INTO spend VALUES ('key_a', 'total', 250000000, 100000000)")
    conn.close()

    store = SQLiteStateStore(path)
    use = store.usage("key_a", now, "total")
    assert (use.requests, use.tokens, use.in_flight, use.spent_usd, use.reserved_usd) == (2, 42, 1, 0.25, 0.1)
    assert store.version() == 7
    assert store.admit("key_a", "x", now, Limits(rpm=3)).admitted
    assert store.admit("key_a", "y", now, Limits(rpm=3)).limit == "rpm"
    tables = {name for (name,) in store._connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"meta", "keys", "counters"}
    assert store._connection().execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION
    store.close()


def _unavailable(path: str) -> StateUnavailable:
    with pytest.raises(StateUnavailable) as caught:
        SQLiteStateStore(path)
    # One clear line; sqlite3's own exception is not chained onto it.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_directory_is_not_a_state_file(tmp_path: Path) -> None:
    assert str(_unavailable(str(tmp_path))) == f"state store {tmp_path}: is a directory, not a SQLite file"


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "state.sqlite"
    message = str(_unavailable(str(path)))
    assert message == f"state store {path}: cannot create the file: its directory {path.parent} does not exist"
    assert not path.parent.exists()


def test_a_file_in_place_of_the_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "state.sqlite"
    assert str(_unavailable(str(path))).endswith(f"cannot create the file: {path.parent} is not a directory")


def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough to have a header of its own" * 20)
    assert str(_unavailable(str(path))) == f"state store {path}: is not a SQLite database (corrupt, or another kind " \
                                           "of file)"


def test_a_lock_held_past_the_busy_timeout_is_state_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.sqlite")
    store = SQLiteStateStore(path, busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StateUnavailable, match="database is locked: another process held it longer than 0.05 s"):
        store.admit("key_a", "a", time.time(), Limits(rpm=1))
    assert store.version() == 0  # reads go on while another process writes (WAL)
    holder.execute("ROLLBACK")
    holder.close()
    assert store.admit("key_a", "a", time.time(), Limits(rpm=1)).admitted  # no transaction was left open
    store.close()


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.sqlite")
    SQLiteStateStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "closed.sqlite")
    store = SQLiteStateStore(path)
    store.close()
    with pytest.raises(StateUnavailable, match="used after close"):
        store.version()


# -- fork --------------------------------------------------------------------------------------------------

def _use_inherited(store: SQLiteStateStore, parent_conn: sqlite3.Connection, results: Queue[Any]) -> None:
    """Use a store built (and used) in the parent: it must open its own connection."""
    try:
        answer = store.admit("key_fork", "child", time.time(), Limits(rpm=2))
        store.put_key(record("key_from_child"))
        fresh = store._connection() is not parent_conn
        seen = store.usage("key_fork", time.time(), None).requests
        store.close()
        results.put({"admitted": answer.admitted, "requests": answer.requests, "fresh": fresh, "seen": seen})
    except BaseException:
        results.put({"crash": traceback.format_exc()})


@needs_fork
def test_a_store_used_before_fork_works_in_the_child_and_the_parent(tmp_path: Path) -> None:
    path = str(tmp_path / "fork.sqlite")
    store = SQLiteStateStore(path)
    assert store.admit("key_fork", "parent", time.time(), Limits(rpm=2)).admitted
    parent_conn = store._connection()
    results: Queue[Any] = FORK.Queue()
    child = FORK.Process(target=_use_inherited, args=(store, parent_conn, results))
    child.start()
    report = results.get(timeout=30)
    child.join(timeout=10)
    assert "crash" not in report, report["crash"]
    assert child.exitcode == 0
    assert report == {"admitted": True, "requests": 2, "fresh": True, "seen": 2}

    # The parent carries on with its own connection and sees what the child did.
    assert store._connection() is parent_conn
    assert store.get_key("key_from_child") is not None
    assert store.admit("key_fork", "parent-2", time.time(), Limits(rpm=2)).limit == "rpm"
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_process_change_the_fork_hook_missed_opens_a_new_connection(tmp_path: Path) -> None:
    # A fork that did not go through os.fork() (so no at-fork hook ran) is seen by the pid check alone.
    store = SQLiteStateStore(str(tmp_path / "pid.sqlite"))
    old = store._connection()
    store._pid = store._local.pid = -1
    assert store._connection() is not old
    assert any(conn is old for conn in sqlite_store._INHERITED)  # kept, never closed
    assert store.admit("key_p", "a", time.time(), Limits()).admitted
    store.close()
