"""LogStore in one process: round trip, batching, flush, drops, retention, queries and analytics."""

from __future__ import annotations

import logging
import sqlite3
import statistics
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from app.logstore import SCHEMA_VERSION, LogRecord, LogStore
from app.logstore import reader as reader_module
from app.logstore import writer as writer_module
from app.logstore.schema import retry_busy

DAY = 86400.0
BASE_TS = 1_700_000_000.0


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, now: float = BASE_TS) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_record(trace_id: str = "trace-1", **changes: Any) -> LogRecord:
    """Return a plausible successful unified call; changes override any field."""
    base = LogRecord(
        trace_id=trace_id, ts=BASE_TS, key_name="team-a", provider="openai", target_path="config.targets[0]",
        method="POST", route="unified", path="/v1/chat/completions", status=200, upstream_status=200,
        latency_ms=120.0, upstream_ms=100.0, retries=0, cache_status="MISS", model="gpt-4o-mini",
        input_tokens=10, output_tokens=20, cache_read_tokens=None, cache_write_tokens=None, search_units=None,
        cost_usd=0.001, unknown_price=False, metadata={}, error=None,
    )
    return replace(base, **changes)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "logs" / "requests.sqlite")


@pytest.fixture
def store(db_path: str):  # type: ignore[no-untyped-def]
    """A store whose writer only wakes when told (flush) or for a full batch; records from 2023 are kept."""
    s = LogStore(db_path, retention_days=None, flush_interval_s=60)
    yield s
    s.close()


def raw_count(path: str) -> int:
    """Count rows through a connection of our own, as another process would see them."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


# -- schema and round trip ------------------------------------------------------------------------------


def index_names(conn: sqlite3.Connection) -> set[str]:
    """Return the names of the indexes created by the schema (not SQLite's own)."""
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


def test_schema_is_created_once_in_wal_with_version_and_indexes(db_path: str) -> None:
    LogStore(db_path).close()
    LogStore(db_path).close()  # a second opening of the same file changes nothing
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert index_names(conn) == {"requests_ts", "requests_trace_id"}
    conn.close()


def test_a_version_1_file_loses_its_low_cardinality_indexes_and_keeps_its_rows(db_path: str) -> None:
    from app.logstore.schema import MIGRATIONS
    Path(db_path).parent.mkdir()
    conn = sqlite3.connect(db_path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO requests (trace_id, ts, method, route, path, status, latency_ms) "
                 "VALUES ('old', 1.0, 'POST', 'proxy', '/v1/x', 200, 1.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    LogStore(db_path).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert index_names(conn) == {"requests_ts", "requests_trace_id"}
    assert conn.execute("SELECT trace_id FROM requests").fetchall() == [("old",)]
    conn.close()


def test_every_field_round_trips(store: LogStore) -> None:
    full = make_record(
        "trace-full", ts=BASE_TS + 0.125, key_name="team-b", provider="anthropic", target_path="config.targets[1]",
        method="PUT", route="proxy", path="/v1/messages", status=502, upstream_status=503, latency_ms=812.5,
        upstream_ms=640.25, retries=2, cache_status="HIT", model="claude-3", input_tokens=11, output_tokens=22,
        cache_read_tokens=33, cache_write_tokens=44, search_units=3, cost_usd=0.0123, unknown_price=True,
        metadata={"team": "search", "nested": {"a": [1, 2]}, "ünï": "çødé"}, error="upstream timed out",
        total_tokens=99,
    )
    empty = make_record(
        "trace-empty", key_name=None, provider=None, target_path=None, upstream_status=None, upstream_ms=None,
        cache_status=None, model=None, input_tokens=None, output_tokens=None, search_units=None, cost_usd=None,
        metadata={}, error=None,
    )
    store.record(full)
    store.record(empty)
    assert store.flush()
    rows = {row["trace_id"]: row for row in store.query()}
    for rec in (full, empty):
        row = rows[rec.trace_id]
        for f in fields(LogRecord):
            assert row[f.name] == getattr(rec, f.name) if f.name != "total_tokens" else True, f.name
    assert rows["trace-full"]["total_tokens"] == 99
    assert rows["trace-empty"]["total_tokens"] is None
    assert isinstance(rows["trace-full"]["id"], int)


def test_total_tokens_defaults_to_input_plus_output(store: LogStore) -> None:
    store.record(make_record("a", input_tokens=7, output_tokens=5))
    store.record(make_record("b", input_tokens=7, output_tokens=None))
    assert store.flush()
    totals = {row["trace_id"]: row["total_tokens"] for row in store.query()}
    assert totals == {"a": 12, "b": 7}


def test_error_text_is_clipped(store: LogStore) -> None:
    store.record(make_record("a", error="upstream said: " + "x" * 5000))
    assert store.flush()
    error = store.query()[0]["error"]
    assert error.startswith("upstream said: x") and len(error) == 1000


# -- writer: batching, flush, drops, close -------------------------------------------------------------


def test_flush_waits_until_rows_are_committed(store: LogStore, db_path: str) -> None:
    for i in range(10):
        store.record(make_record(f"t{i}"))
    assert raw_count(db_path) == 0  # the writer sleeps for 60 s unless told
    assert store.flush()
    assert raw_count(db_path) == 10
    assert store.pending == 0


def test_records_between_flushes_share_one_transaction(store: LogStore) -> None:
    for i in range(300):
        store.record(make_record(f"t{i}"))
    assert store.flush()
    assert store.commits == 1


def test_many_records_make_few_transactions(db_path: str) -> None:
    store = LogStore(db_path, retention_days=None, batch_size=500, flush_interval_s=60)
    for i in range(5000):
        store.record(make_record(f"t{i}"))
    assert store.flush()
    assert store.count() == 5000
    # 10 full batches; a few more when the writer catches the queue mid-fill, never one per record.
    assert 10 <= store.commits <= 40
    store.close()


def test_writer_commits_by_itself_after_the_interval(db_path: str) -> None:
    store = LogStore(db_path, retention_days=None, flush_interval_s=0.05)
    store.record(make_record())
    deadline = time.monotonic() + 5
    while raw_count(db_path) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert raw_count(db_path) == 1
    store.close()


def test_flush_without_records_returns_at_once(store: LogStore) -> None:
    assert store.flush(timeout_s=0)


def test_full_queue_drops_counts_and_warns_once(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    store = LogStore(db_path, retention_days=None, queue_max=5, batch_size=1000, flush_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="app.logstore"):
        for i in range(8):
            store.record(make_record(f"t{i}"))
    assert store.dropped == 3
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    assert store.flush()
    assert store.count() == 5
    store.close()


def test_record_never_raises_and_a_bad_record_costs_only_itself(store: LogStore) -> None:
    store.record(make_record("good-1"))
    store.record(object())  # type: ignore[arg-type]
    store.record(make_record("bad-status", status="not a number"))  # type: ignore[arg-type]
    store.record(make_record("good-2", metadata={"obj": object()}))  # unserialisable tag value: stringified
    assert store.flush() is False  # failed rows are reported
    assert store.failed == 2
    assert {row["trace_id"] for row in store.query()} == {"good-1", "good-2"}


def test_close_flushes_and_later_records_are_dropped(db_path: str) -> None:
    store = LogStore(db_path, retention_days=None, flush_interval_s=60)
    for i in range(25):
        store.record(make_record(f"t{i}"))
    store.close()
    assert raw_count(db_path) == 25
    store.record(make_record("late"))
    assert store.dropped == 1
    assert store.count() == 25  # queries still work after close


def test_write_errors_are_counted_and_the_writer_recovers(store: LogStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store.record(make_record("ok-1"))
    assert store.flush()
    with monkeypatch.context() as patch:
        patch.setattr(writer_module, "INSERT_SQL", "INSERT INTO no_such_table VALUES (?)")
        store.record(make_record("lost"))
        assert store.flush() is False
    assert store.failed == 1
    store.record(make_record("ok-2"))
    assert store.flush()
    assert ids(store.query()) == ["ok-2", "ok-1"]


def test_a_writer_in_another_connection_only_delays_the_batch(store: LogStore, db_path: str) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another worker's writer would
    store.record(make_record("waits"))
    started = time.monotonic()
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    assert store.flush(timeout_s=10)
    assert time.monotonic() - started >= 0.25
    assert store.count() == 1
    timer.join()
    other.close()


def test_retry_busy_retries_only_busy_errors() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    assert retry_busy(flaky, "test") == "done" and len(calls) == 3
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_busy(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such table: x")), "test")


# -- retention --------------------------------------------------------------------------------------------


def test_retention_deletes_old_rows_at_most_once_a_minute(db_path: str) -> None:
    clock = FakeClock()
    store = LogStore(db_path, retention_days=30, flush_interval_s=60, clock=clock)
    for i in range(5):
        store.record(make_record(f"old{i}", ts=clock.now - 31 * DAY))
    for i in range(3):
        store.record(make_record(f"new{i}", ts=clock.now - 29 * DAY))
    assert store.flush()
    assert store.count() == 3  # the first pass runs with the first batch
    store.record(make_record("old-late", ts=clock.now - 40 * DAY))
    assert store.flush()
    clock.advance(30)
    assert store.flush()
    assert store.count() == 4  # not a minute yet since the last pass
    clock.advance(31)
    assert store.flush()
    assert store.count() == 3
    clock.advance(2 * DAY)
    assert store.flush()
    assert store.count() == 0
    store.close()


def test_retention_deletes_in_small_batches(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "PRUNE_BATCH", 10)
    monkeypatch.setattr(writer_module, "PRUNE_MAX_ROUNDS", 3)
    clock = FakeClock()
    store = LogStore(db_path, retention_days=1, flush_interval_s=60, clock=clock)
    for i in range(45):
        store.record(make_record(f"old{i}", ts=clock.now - 2 * DAY))
    store.record(make_record("fresh", ts=clock.now))
    assert store.flush()
    assert store.count() == 16  # three rounds of ten this pass...
    assert store.flush()
    assert store.count() == 1  # ...and the rest at the next wake-up, without waiting a minute
    store.close()


def test_no_retention_keeps_everything(db_path: str) -> None:
    clock = FakeClock()
    store = LogStore(db_path, retention_days=None, flush_interval_s=60, clock=clock)
    store.record(make_record("ancient", ts=clock.now - 3650 * DAY))
    assert store.flush()
    assert store.count() == 1
    store.close()


# -- query ------------------------------------------------------------------------------------------------


@pytest.fixture
def filled(store: LogStore) -> LogStore:
    """Six calls that differ in one field each from the first."""
    store.record(make_record("base", ts=BASE_TS, metadata={"team": "search", "env": "prod"}))
    store.record(make_record("later", ts=BASE_TS + 100, metadata={"team": "search", "env": "dev"}))
    store.record(make_record("key-b", ts=BASE_TS + 10, key_name="team-b"))
    store.record(make_record("anthropic", ts=BASE_TS + 20, provider="anthropic", metadata={"team": "ads"}))
    store.record(make_record("rate-limited", ts=BASE_TS + 30, status=429, upstream_status=429))
    store.record(make_record("bad-gateway", ts=BASE_TS + 40, status=502, metadata={"a.b": "dotted"}))
    assert store.flush()
    return store


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["trace_id"] for row in rows]


def test_query_lists_newest_first(filled: LogStore) -> None:
    assert ids(filled.query()) == ["bad-gateway", "rate-limited", "anthropic", "key-b", "later", "base"]


@pytest.mark.parametrize(("filters", "expected"), [
    ({"since": BASE_TS + 20}, {"later", "anthropic", "rate-limited", "bad-gateway"}),
    ({"until": BASE_TS + 20}, {"base", "key-b"}),
    ({"since": BASE_TS + 10, "until": BASE_TS + 40}, {"key-b", "anthropic", "rate-limited"}),
    ({"key_name": "team-b"}, {"key-b"}),
    ({"provider": "anthropic"}, {"anthropic"}),
    ({"status": 429}, {"rate-limited"}),
    ({"status_class": "2xx"}, {"base", "later", "key-b", "anthropic"}),
    ({"status_class": "4xx"}, {"rate-limited"}),
    ({"status_class": "5xx"}, {"bad-gateway"}),
    ({"trace_id": "later"}, {"later"}),
    ({"metadata": {"team": "search"}}, {"base", "later"}),
    ({"metadata": {"team": "search", "env": "prod"}}, {"base"}),
    ({"metadata": {"a.b": "dotted"}}, {"bad-gateway"}),
    ({"metadata": {"team": "nobody"}}, set()),
    ({"provider": "openai", "status_class": "2xx", "since": BASE_TS + 5}, {"later", "key-b"}),
    ({"key_name": "team-a' OR '1'='1"}, set()),
])
def test_query_filters(filled: LogStore, filters: dict[str, Any], expected: set[str]) -> None:
    assert set(ids(filled.query(**filters))) == expected


def test_query_pages_with_before_id(store: LogStore) -> None:
    for i in range(25):
        store.record(make_record(f"t{i:02d}", provider="openai" if i % 2 else "cohere"))
    assert store.flush()
    pages: list[list[dict[str, Any]]] = []
    before: int | None = None
    while True:
        page = store.query(limit=10, before_id=before)
        if not page:
            break
        pages.append(page)
        before = page[-1]["id"]
    assert [len(p) for p in pages] == [10, 10, 5]
    all_ids = [row["id"] for page in pages for row in page]
    assert all_ids == sorted(all_ids, reverse=True) and len(set(all_ids)) == 25
    assert ids(pages[0])[:2] == ["t24", "t23"]
    # Filters and cursor combine.
    odd = store.query(provider="openai", limit=5, before_id=pages[0][4]["id"])
    assert ids(odd) == ["t19", "t17", "t15", "t13", "t11"]


@pytest.mark.parametrize("bad", [
    {"status_class": "6xx"}, {"status_class": "2XX"}, {"metadata": {"bad tag": "x"}},
    {"metadata": {"x')--": "x"}}, {"metadata": {"t" * 65: "x"}}, {"limit": 0}, {"limit": 1001},
])
def test_query_refuses_bad_arguments(filled: LogStore, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        filled.query(**bad)


# -- analytics --------------------------------------------------------------------------------------------


@pytest.fixture(params=["python", "sqlite"])
def percentiles_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with percentiles sorted in Python (small ranges) and in SQLite (past the row threshold)."""
    if request.param == "sqlite":
        monkeypatch.setattr(reader_module, "PYTHON_PERCENTILE_MAX_ROWS", 0)
    return str(request.param)


def test_analytics_by_provider_exact_numbers(store: LogStore, percentiles_in: str) -> None:
    # openai: latencies 1..100, ten 500s and five 429s, tokens i and 2i, $0.01 each but five unpriced.
    for i in range(1, 101):
        status = 500 if i <= 10 else 429 if i <= 15 else 200
        unpriced = i > 95
        store.record(make_record(f"o{i}", ts=BASE_TS + i, provider="openai", latency_ms=float(i), status=status,
                                 input_tokens=i, output_tokens=2 * i, cost_usd=None if unpriced else 0.01,
                                 unknown_price=unpriced))
    for i, latency in enumerate([40.0, 10.0, 30.0, 20.0]):
        store.record(make_record(f"c{i}", ts=BASE_TS + i, provider="cohere", latency_ms=latency,
                                 input_tokens=None, output_tokens=None, cost_usd=None, unknown_price=True))
    store.record(make_record("outside", ts=BASE_TS + 5000, provider="openai", latency_ms=1e6))
    assert store.flush()
    rows = {row["group"]: row for row in store.analytics(since=BASE_TS, until=BASE_TS + 1000, group_by="provider")}
    assert set(rows) == {"openai", "cohere"}
    openai, cohere = rows["openai"], rows["cohere"]
    assert openai["requests"] == 100 and openai["errors"] == 15
    assert openai["p50_ms"] == pytest.approx(50.5) and openai["p95_ms"] == pytest.approx(95.05)
    assert openai["input_tokens"] == 5050 and openai["output_tokens"] == 10100
    assert openai["cost_usd"] == pytest.approx(0.95) and openai["unknown_price"] == 5
    # 10, 20, 30, 40: p50 halfway between 20 and 30; p95 at 85% from 30 to 40.
    assert cohere["requests"] == 4 and cohere["errors"] == 0
    assert cohere["p50_ms"] == pytest.approx(25.0) and cohere["p95_ms"] == pytest.approx(38.5)
    assert cohere["input_tokens"] == 0 and cohere["cost_usd"] is None and cohere["unknown_price"] == 4


def test_analytics_percentiles_match_statistics_module(store: LogStore, percentiles_in: str) -> None:
    latencies = [((i * 7919) % 1000) / 3 for i in range(1, 338)]  # 337 distinct-ish values, unsorted
    for i, latency in enumerate(latencies):
        store.record(make_record(f"t{i}", latency_ms=latency))
    store.record(make_record("single", provider="solo", latency_ms=42.0))
    assert store.flush()
    rows = {row["group"]: row for row in store.analytics(since=0, until=BASE_TS + 1, group_by="provider")}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    assert rows["openai"]["p50_ms"] == pytest.approx(cuts[49])
    assert rows["openai"]["p95_ms"] == pytest.approx(cuts[94])
    assert rows["solo"]["p50_ms"] == rows["solo"]["p95_ms"] == 42.0


def test_analytics_by_model_key_and_metadata(store: LogStore, percentiles_in: str) -> None:
    store.record(make_record("1", model="m1", key_name="k1", metadata={"team": "x"}, latency_ms=10))
    store.record(make_record("2", model="m1", key_name="k2", metadata={"team": "x"}, latency_ms=20, status=503))
    store.record(make_record("3", model="m2", key_name="k2", metadata={"team": "y"}, latency_ms=30))
    store.record(make_record("4", model=None, key_name=None, metadata={}, latency_ms=40))
    assert store.flush()

    def counts(group_by: str) -> dict[Any, tuple[int, int]]:
        rows = store.analytics(since=0, until=BASE_TS + 1, group_by=group_by)
        return {row["group"]: (row["requests"], row["errors"]) for row in rows}

    assert counts("model") == {"m1": (2, 1), "m2": (1, 0), None: (1, 0)}
    assert counts("key") == {"k1": (1, 0), "k2": (2, 1), None: (1, 0)}
    assert counts("metadata:team") == {"x": (2, 1), "y": (1, 0), None: (1, 0)}
    first = store.analytics(since=0, until=BASE_TS + 1, group_by="model")[0]
    assert first["group"] == "m1" and first["p50_ms"] == pytest.approx(15.0)  # biggest group first


def test_analytics_time_buckets(store: LogStore, percentiles_in: str) -> None:
    start = 1_700_000_040.0  # a whole minute
    offsets = [0, 1, 59.9, 60, 61, 180, 239.5]
    for i, offset in enumerate(offsets):
        store.record(make_record(f"t{i}", ts=start + offset, latency_ms=float(i), input_tokens=1, cost_usd=0.5))
    assert store.flush()
    rows = store.analytics(since=start, until=start + 240, group_by="time:60")
    assert [(row["group"], row["requests"]) for row in rows] == [
        (start, 3), (start + 60, 2), (start + 180, 2)]
    assert [row["input_tokens"] for row in rows] == [3, 2, 2]
    assert rows[0]["cost_usd"] == pytest.approx(1.5)
    assert rows[2]["p50_ms"] == pytest.approx(5.5)
    hourly = store.analytics(since=start, until=start + 240, group_by="time:3600")
    assert len(hourly) == 1 and hourly[0]["requests"] == 7


def test_analytics_empty_range(filled: LogStore) -> None:
    assert filled.analytics(since=0, until=1, group_by="provider") == []


@pytest.mark.parametrize("group_by", [
    "status", "provider; DROP TABLE requests", "metadata:", "metadata:bad name", "metadata:x\"y",
    "time:0", "time:-5", "time:1.5", "time:", "key_name",
])
def test_analytics_refuses_groupings_outside_the_whitelist(filled: LogStore, group_by: str) -> None:
    with pytest.raises(ValueError):
        filled.analytics(since=0, until=BASE_TS + 1, group_by=group_by)
    assert filled.count() == 6


# -- per-process state ---------------------------------------------------------------------------------


def test_a_pid_change_without_fork_hooks_starts_a_fresh_writer(store: LogStore) -> None:
    store.record(make_record("before"))
    assert store.flush()
    # What a fork the hooks did not see looks like from inside the child: state stamped with another pid.
    store._pid = store._writer_pid = -1
    store.record(make_record("after"))
    assert store.flush()
    assert store.count() == 2
