"""SharedCache: one SQLite file shared by processes behind each one's memory; expiry, bounds, failures and fork."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import sys
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from app.cache import CachedAnswer, MemoryCache, RedisCache, SharedCache, build_cache
from app.cache.shared import EVICT_TO

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: shares nothing with this one but the file
JSON = (("content-type", "application/json"),)
BINARY = bytes(range(256)) * 8 + b"\n\r\n\x00 tail"


class FakeClock:
    """A clock that moves only when told (used as both the wall clock and the memory layer's clock)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on."""
        self.now += seconds


def answer(body_bytes: int, fill: bytes = b"x") -> CachedAnswer:
    """Return a 200 JSON answer with a body of body_bytes bytes."""
    return CachedAnswer(200, JSON, (fill * body_bytes)[:body_bytes])


def rows(path: Path) -> dict[str, int]:
    """Return key -> size of every entry in the file, read with a plain connection."""
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, size FROM entries").fetchall())


def stored_total(path: Path) -> tuple[int, int]:
    """Return the file's running total and the sum of its entries' sizes."""
    with sqlite3.connect(path) as conn:
        total = conn.execute("SELECT bytes FROM total").fetchone()[0]
        summed = conn.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]
    return total, summed


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Return a cache file path whose directory does not exist yet (the store creates it)."""
    return tmp_path / "cache" / "shared.sqlite"


@pytest.fixture
def cache_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the store's log directly: the app's own logging set-up may stop propagation to root."""
    logger = logging.getLogger("app.cache.shared")
    saved = (logger.level, logger.propagate, logger.disabled)
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate, logger.disabled = False, False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.level, logger.propagate, logger.disabled = saved


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the warnings logged so far."""
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


class ProblemLog(logging.Handler):
    """Collect what the store warns about in a child process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message."""
        self.messages.append(record.getMessage())


def _other_process(path: str, results: Queue[Any]) -> None:
    """Open a cache of its own on path: report what the parent stored, and store an answer for the parent."""
    problems = ProblemLog()
    logging.getLogger("app.cache.shared").addHandler(problems)
    try:
        cache = SharedCache(path, 1 << 20)
        seen = cache.get("from-parent")
        cache.put("from-child", CachedAnswer(201, JSON, b"child " + BINARY), 60)
        cache.close()
        results.put({"seen": None if seen is None else (seen.status, seen.headers, seen.body),
                     "problems": problems.messages})
    except BaseException:
        results.put({"crash": traceback.format_exc()})


def test_a_put_in_one_process_is_a_hit_in_another(path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    parent = SharedCache(str(path), 1 << 20)
    parent.put("from-parent", CachedAnswer(203, (("content-encoding", "gzip"), *JSON), BINARY), 60)
    results: Queue[Any] = SPAWN.Queue()
    child = SPAWN.Process(target=_other_process, args=(str(path), results))
    child.start()
    report = results.get(timeout=30)
    child.join(timeout=10)
    assert "crash" not in report, report.get("crash")
    assert report["seen"] == (203, (("content-encoding", "gzip"), *JSON), BINARY)
    assert report["problems"] == []
    assert parent.get("from-child") == CachedAnswer(201, JSON, b"child " + BINARY)  # not in its memory: the file
    assert warnings_in(cache_log) == []
    parent.close()


def _create_at_once(path: str, worker: int, barrier: Barrier, results: Queue[Any]) -> None:
    """Create the cache on a file nobody has made yet, at the same moment as the others; put and read back."""
    problems = ProblemLog()
    logging.getLogger("app.cache.shared").addHandler(problems)
    try:
        barrier.wait(timeout=10)
        cache = SharedCache(path, 1 << 20)
        cache.put(f"worker-{worker}", answer(100, b"%d" % worker), 60)
        reread = SharedCache(path, 1 << 20).get(f"worker-{worker}")  # a second store: its memory is empty
        results.put({"worker": worker, "reread": reread is not None, "problems": problems.messages})
    except BaseException:
        results.put({"worker": worker, "crash": traceback.format_exc()})


def test_processes_creating_the_file_at_the_same_moment_all_succeed(path: Path) -> None:
    count = 4
    barrier = FORK.Barrier(count)
    results: Queue[Any] = FORK.Queue()
    children = [FORK.Process(target=_create_at_once, args=(str(path), w, barrier, results)) for w in range(count)]
    for child in children:
        child.start()
    reports = [results.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=10)
    assert all("crash" not in r for r in reports), [r.get("crash") for r in reports]
    assert all(r["reread"] and r["problems"] == [] for r in reports), reports
    reader = SharedCache(str(path), 1 << 20)
    for worker in range(count):
        assert reader.get(f"worker-{worker}") == answer(100, b"%d" % worker)


def test_round_trip_between_two_stores(path: Path) -> None:
    writer, reader = SharedCache(str(path), 1 << 20), SharedCache(str(path), 1 << 20)
    stored = CachedAnswer(200, JSON, BINARY)
    writer.put("k", stored, 60)
    assert writer.get("k") is stored  # from its memory, without copying
    assert reader.get("k") == stored  # from the file
    assert reader.get("other") is None


def test_entries_expire_max_age_after_the_put(path: Path) -> None:
    clock = FakeClock()
    writer = SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock)
    writer.put("k", answer(500), 60)
    clock.advance(59.5)
    assert SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock).get("k") == answer(500)
    clock.advance(1.0)
    assert SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock).get("k") is None
    assert writer.get("k") is None  # its memory copy expired at the same moment
    assert "k" in rows(path)  # an expired row is left for eviction or the next put, not served


def test_a_hit_from_the_file_is_remembered_for_the_remaining_lifetime_only(path: Path) -> None:
    clock = FakeClock()
    writer = SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock)
    reader = SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock)
    writer.put("k", answer(500), 60)
    clock.advance(55.5)
    assert reader.get("k") == answer(500)  # from the file: 4.5 s left
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM entries")  # from now on only the reader's memory can answer
    clock.advance(3.9)
    assert reader.get("k") == answer(500)
    clock.advance(0.2)  # past the remaining lifetime (rounded down to whole seconds), not a fresh 60 s
    assert reader.get("k") is None


def test_memory_keeps_a_hit_from_the_file_at_most_ten_seconds(path: Path) -> None:
    clock = FakeClock()
    writer = SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock)
    reader = SharedCache(str(path), 1 << 20, clock=clock, l1_clock=clock)
    writer.put("k", answer(500), 3600)
    assert reader.get("k") == answer(500)
    writer.put("k", answer(700), 3600)  # a force-refresh on another worker replaces the file's entry
    clock.advance(9.9)
    assert reader.get("k") == answer(500)
    clock.advance(0.2)
    assert reader.get("k") == answer(700)  # memory let go; the file has the new answer


def test_the_memory_layer_is_a_fraction_of_the_bound_with_the_same_entry_limit(path: Path) -> None:
    cache = SharedCache(str(path), 800_000, max_entry_bytes=50_000)
    assert cache.max_entry_bytes == 50_000
    assert cache._l1.max_bytes == 200_000 and cache._l1.max_entry_bytes == 50_000
    default = SharedCache(str(path), 800_000)
    assert default.max_entry_bytes == 100_000 and default._l1.max_entry_bytes == 100_000


def test_answers_over_max_entry_bytes_are_not_stored(path: Path) -> None:
    writer = SharedCache(str(path), 1 << 20, max_entry_bytes=5_000)
    writer.put("big", answer(5_000), 60)  # its size counts headers and overhead too: over the limit
    assert writer.get("big") is None
    assert SharedCache(str(path), 1 << 20).get("big") is None
    assert rows(path) == {}
    writer.put("k", answer(1_000), 60)
    assert "k" in rows(path)


def test_a_put_that_cannot_be_kept_still_supersedes_the_older_answer(path: Path) -> None:
    writer = SharedCache(str(path), 1 << 20, max_entry_bytes=5_000)
    reader = SharedCache(str(path), 1 << 20)
    for replacement, max_age in ((answer(6_000), 60), (answer(10), 0)):
        writer.put("k", answer(1_000), 60)
        assert reader.get("k") is not None
        reader.close()  # forget the copy in memory (as another worker that never read it)
        reader = SharedCache(str(path), 1 << 20)
        writer.put("k", replacement, max_age)
        assert writer.get("k") is None and reader.get("k") is None
        assert rows(path) == {}


def test_the_files_size_stays_within_the_bound_evicting_the_soonest_to_expire_in_batches(path: Path) -> None:
    max_bytes = 1_000_000
    cache = SharedCache(str(path), max_bytes, max_entry_bytes=10_000)
    for i in range(20):
        cache.put(f"long-{i}", answer(2_000), 86_400)  # these expire last: eviction must leave them
    evictions, previous = 0, 0
    for i in range(1_000):
        cache.put(f"short-{i}", answer(2_000), 60 + i % 7)
        total, summed = stored_total(path)
        assert total == summed <= max_bytes
        if total < previous:
            evictions += 1
            assert total <= max_bytes * EVICT_TO  # down past the bound, not just under it
        previous = total
    assert 0 < evictions < 1_000 / 10  # batches, not one per put
    kept = rows(path)
    assert all(f"long-{i}" in kept for i in range(20))
    assert sum(kept.values()) <= max_bytes


def test_one_big_put_evicts_as_many_small_entries_as_it_takes(path: Path) -> None:
    max_bytes = 300_000
    cache = SharedCache(str(path), max_bytes, max_entry_bytes=150_000)
    for i in range(1_000):
        cache.put(f"small-{i}", answer(10), 60)  # 1000 entries of ~290 bytes: more than one eviction batch
    cache.put("big", answer(140_000), 3_600)
    total, summed = stored_total(path)
    assert total == summed <= max_bytes * EVICT_TO
    assert "big" in rows(path)


def test_a_damaged_entry_is_a_miss(path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    SharedCache(str(path), 1 << 20).put("k", answer(100), 60)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET value = ?", (b"not an entry",))
    assert SharedCache(str(path), 1 << 20).get("k") is None
    assert any("unreadable entry" in message for message in warnings_in(cache_log))


def _break_path(kind: str, path: Path) -> None:
    """Make path unusable in the named way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not a SQLite database\n" * 200)
    elif kind == "directory":
        path.mkdir()
    elif kind == "parent is a file":
        path.parent.rmdir()
        path.parent.write_text("a file where the directory should be")
    elif kind == "another database":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE precious (x)")
            conn.execute("INSERT INTO precious VALUES (1)")


@pytest.mark.parametrize("kind", ["garbage", "directory", "parent is a file", "another database"])
def test_an_unusable_file_degrades_to_misses_without_raising(
        path: Path, kind: str, cache_log: pytest.LogCaptureFixture) -> None:
    _break_path(kind, path)
    before = path.read_bytes() if path.is_file() else None
    cache = SharedCache(str(path), 1 << 20, retry_interval_s=0)  # retried at every call: still no exception
    other = SharedCache(str(path), 1 << 20, retry_interval_s=0)
    for i in range(50):
        cache.put(f"k{i}", answer(100), 60)
        assert other.get(f"k{i}") is None
    assert cache.get("k0") == answer(100)  # the worker's own memory still serves
    cache.close()
    other.close()
    warnings = warnings_in(cache_log)
    assert len(warnings) == 2, warnings  # one per store, however many calls failed
    assert all(str(path) in warning for warning in warnings)
    if before is not None:
        assert path.read_bytes() == before  # a file that is not ours is never written to


def test_a_file_that_breaks_while_in_use_degrades_to_misses(path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    cache = SharedCache(str(path), 1 << 20, retry_interval_s=0)
    cache.put("k", answer(100), 60)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE entries")
    cache.put("k2", answer(100), 60)
    assert SharedCache(str(path), 1 << 20).get("k2") is None
    assert len(warnings_in(cache_log)) >= 1


def test_closed_store_misses_and_ignores_puts(path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    cache = SharedCache(str(path), 1 << 20)
    cache.put("k", answer(100), 60)
    cache.close()
    assert cache.get("k") is None
    cache.put("k2", answer(100), 60)
    cache.close()  # twice is fine
    assert "k2" not in rows(path) and warnings_in(cache_log) == []


def test_threads_share_one_store(path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    cache = SharedCache(str(path), 4 << 20)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        """Put and read back 100 answers of this thread's own."""
        try:
            for i in range(100):
                cache.put(f"t{thread}-{i}", answer(300, b"%d" % thread), 60)
                assert cache.get(f"t{thread}-{i}") is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and warnings_in(cache_log) == []
    assert len(rows(path)) == 800


def _use_inherited(cache: SharedCache, results: Queue[Any]) -> None:
    """Use the store the parent made (and had used) before the fork; report what it saw."""
    problems = ProblemLog()
    logging.getLogger("app.cache.shared").addHandler(problems)
    try:
        seen = cache.get("from-sibling")  # not in the inherited memory: must come from the file
        conn = cache._connection()
        cache.put("from-child", answer(100, b"c"), 60)
        cache.close()
        results.put({"seen": seen is not None, "own_connection": conn is not None and conn.pid == os.getpid(),
                     "problems": problems.messages})
    except BaseException:
        results.put({"crash": traceback.format_exc()})


def test_a_store_used_before_fork_works_in_the_child_and_still_in_the_parent(
        path: Path, cache_log: pytest.LogCaptureFixture) -> None:
    cache = SharedCache(str(path), 1 << 20)
    cache.put("before", answer(100), 60)  # the parent has a connection open in this thread...
    helper = threading.Thread(target=lambda: cache.put("from-thread", answer(100), 60))
    helper.start()
    helper.join()  # ...and one opened by a thread the child will not have
    parent_conn = cache._connection()
    SharedCache(str(path), 1 << 20).put("from-sibling", answer(100, b"s"), 60)
    results: Queue[Any] = FORK.Queue()
    child = FORK.Process(target=_use_inherited, args=(cache, results))
    child.start()
    report = results.get(timeout=30)
    child.join(timeout=10)
    assert "crash" not in report, report.get("crash")
    assert report == {"seen": True, "own_connection": True, "problems": []}
    assert cache._connection() is parent_conn  # the child's close() left the parent's connections alone
    assert cache.get("from-child") == answer(100, b"c")
    cache.put("after", answer(100), 60)
    assert SharedCache(str(path), 1 << 20).get("after") == answer(100)
    assert warnings_in(cache_log) == []


def test_build_cache_picks_the_shared_store_when_given_a_path(path: Path) -> None:
    shared = build_cache("memory", 80_000, shared_path=str(path))
    assert isinstance(shared, SharedCache) and shared.max_entry_bytes == 10_000
    shared.close()
    assert isinstance(build_cache("memory", 80_000), MemoryCache)
    redis_cache = build_cache("redis://127.0.0.1:6379/0", 80_000, shared_path=str(path))
    assert isinstance(redis_cache, RedisCache)  # Redis is shared already: the path is not used
    redis_cache.close()
