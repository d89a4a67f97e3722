"""The request log's client_ip column: schema version 3, the migration from version 2, the filter."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.logstore import SCHEMA_VERSION, LogRecord, LogStore
from app.logstore.schema import MIGRATIONS


def record(trace_id: str, client_ip: str | None) -> LogRecord:
    return LogRecord(trace_id=trace_id, ts=1_700_000_000.0, key_name="k", provider="openai", target_path=None,
                     method="POST", route="unified", path="/v1/chat/completions", status=200, upstream_status=200,
                     latency_ms=1.0, upstream_ms=1.0, retries=0, cache_status="MISS", model=None, input_tokens=None,
                     output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, search_units=None,
                     cost_usd=None, unknown_price=False, client_ip=client_ip)


def version_2_file(path: Path) -> None:
    """Write a request log as a gateway of schema version 2 left it, with one row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("INSERT INTO requests (trace_id, ts, method, route, path, status, latency_ms) "
                 "VALUES ('before', 1700000000.0, 'POST', 'proxy', '/v1/x', 200, 1.0)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(requests)")]
    finally:
        conn.close()


def test_a_version_2_file_opens_and_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "requests.sqlite"
    version_2_file(path)
    assert "client_ip" not in columns(path)
    store = LogStore(str(path), retention_days=None)
    try:
        store.record(record("after", "203.0.113.7"))
        assert store.flush()
        rows = {row["trace_id"]: row for row in store.query()}
    finally:
        store.close()
    assert rows["before"]["client_ip"] is None  # written before anyone knew
    assert rows["after"]["client_ip"] == "203.0.113.7"
    assert "client_ip" in columns(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()
    LogStore(str(path)).close()  # opening it again changes nothing
    assert columns(path).count("client_ip") == 1


def test_a_new_file_has_the_column_and_filters_on_it(tmp_path: Path) -> None:
    store = LogStore(str(tmp_path / "requests.sqlite"), retention_days=None)
    try:
        for i, ip in enumerate(["203.0.113.7", "2001:db8::1", "203.0.113.7", None]):
            store.record(record(f"t{i}", ip))
        assert store.flush()
        assert [row["trace_id"] for row in store.query(client_ip="203.0.113.7")] == ["t2", "t0"]
        assert [row["trace_id"] for row in store.query(client_ip="2001:db8::1")] == ["t1"]
        assert store.query(client_ip="198.51.100.1") == []
        assert len(store.query()) == 4
    finally:
        store.close()

