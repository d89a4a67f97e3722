"""Serving never depends on the request log: an unusable [logs] path degrades the log, never the gateway.

The broken paths work as root too (chmod does not stop root): a directory where the file should be, a
file of random bytes, and a path whose parent is a regular file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import responses
from flask import Flask

from app.logstore import LogStore, LogStoreUnavailable
from app.logstore import writer as writer_module
from app.metrics import get_metrics
from app.settings import SettingsError, hash_key
from tests.conftest import PROVIDER_SECRET, gw_headers
from tests.unit.test_logstore import make_record

ADMIN_KEY = "admin-key-for-logstore-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROBLEMS = {
    "directory": "is a directory",
    "corrupt": "is not a SQLite database",
    "parent_is_a_file": "is not a directory",
}


def broken_path(tmp_path: Path, kind: str) -> str:
    """Return a request-log path that cannot be used, broken in the given way."""
    if kind == "directory":
        path = tmp_path / "logs.sqlite"
        path.mkdir()
    elif kind == "corrupt":
        path = tmp_path / "logs.sqlite"
        path.write_bytes(os.urandom(8192))
    else:
        (tmp_path / "not-a-dir").write_text("a file")
        path = tmp_path / "not-a-dir" / "logs.sqlite"
    return str(path)


@pytest.mark.parametrize("kind", PROBLEMS)
def test_an_unusable_file_never_stops_the_store_and_every_lost_record_is_counted(tmp_path: Path, kind: str) -> None:
    drops: list[int] = []
    store = LogStore(broken_path(tmp_path, kind), on_drop=drops.append)
    for i in range(5):
        store.record(make_record(f"t-{i}"))
    assert store.flush(timeout_s=5) is False  # answers at once: nothing was written
    assert sum(drops) == 5
    with pytest.raises(LogStoreUnavailable, match=PROBLEMS[kind]):
        store.query()
    with pytest.raises(LogStoreUnavailable, match=PROBLEMS[kind]):
        store.analytics(since=0, until=time.time(), group_by="provider")
    store.close(timeout_s=5)


def test_a_file_broken_at_run_time_reads_as_unavailable_not_as_a_database_error(tmp_path: Path) -> None:
    path = tmp_path / "logs.sqlite"
    store = LogStore(str(path), retention_days=None)
    store.record(make_record("before"))
    assert store.flush()
    for name in ("logs.sqlite", "logs.sqlite-wal", "logs.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    path.mkdir()
    raised: list[BaseException] = []

    def query() -> None:  # a thread without a read connection yet, as a new admin request would be
        try:
            store.query()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=query)
    thread.start()
    thread.join()
    assert len(raised) == 1 and isinstance(raised[0], LogStoreUnavailable)
    assert "is a directory" in str(raised[0])
    store.close(timeout_s=5)


def test_a_broken_log_says_so_once_not_per_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.logstore")
    store = LogStore(broken_path(tmp_path, "directory"))
    for i in range(40):
        store.record(make_record(f"t-{i}"))
        store.flush(timeout_s=5)
    lines = [r for r in caplog.records if r.name == "app.logstore"]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]  # the store's warning, one writer error
    assert all("logs.sqlite" in r.getMessage() for r in lines)
    store.close(timeout_s=5)


def test_the_log_comes_back_by_itself_when_the_path_is_fixed(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "REOPEN_EVERY_S", 0.05)
    path = broken_path(tmp_path, "parent_is_a_file")
    store = LogStore(path, retention_days=None)
    store.record(make_record("lost"))
    assert store.flush(timeout_s=5) is False
    os.remove(tmp_path / "not-a-dir")  # the operator fixes the disk; the gateway is not restarted
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.06)
        store.record(make_record("kept"))
        if store.flush(timeout_s=5) or time.monotonic() > deadline:
            break
    assert [row["trace_id"] for row in store.query()][:1] == ["kept"]
    assert "lost" not in {row["trace_id"] for row in store.query()}
    store.close(timeout_s=5)


@pytest.mark.parametrize("kind", PROBLEMS)
def test_start_up_check_names_the_key_the_file_and_the_problem_in_one_line(tmp_path: Path, kind: str) -> None:
    from app.settings import check_logs_path
    from tests.conftest import make_settings

    path = broken_path(tmp_path, kind)
    settings = make_settings(logs_path=path, source="/etc/portico/gateway.toml")
    with pytest.raises(SettingsError) as caught:
        check_logs_path(settings)
    message = str(caught.value)
    assert message.startswith(f"/etc/portico/gateway.toml: [logs] path = {path!r}: ")
    assert PROBLEMS[kind] in message and "\n" not in message


def test_start_up_check_creates_a_good_file_and_ignores_an_absent_log(tmp_path: Path) -> None:
    from app.settings import check_logs_path
    from tests.conftest import make_settings

    path = tmp_path / "new" / "logs.sqlite"
    check_logs_path(make_settings(logs_path=str(path)))
    assert path.is_file()
    check_logs_path(make_settings(logs_path=None))


def dropped_total() -> float:
    """Return the process's portico_log_records_dropped_total."""
    value = get_metrics().registry.get_sample_value("portico_log_records_dropped_total")
    return value or 0.0


@pytest.fixture
def broken_app(app_factory: Callable[..., Flask], tmp_path: Path) -> Flask:
    """An app whose request-log path is a directory."""
    return app_factory(logs_path=broken_path(tmp_path, "directory"), admin_key_sha256=hash_key(ADMIN_KEY))


def test_a_gateway_with_an_unusable_log_serves_calls_and_counts_the_lost_records(broken_app: Flask) -> None:
    before = dropped_total()
    client = broken_app.test_client()
    with responses.RequestsMock() as upstream:
        upstream.post("https://api.openai.com/v1/chat/completions", json={"id": "x"})
        res = client.post("/v1/chat/completions", json={"model": "m"},
                          headers=gw_headers(x_portkey_provider="openai", Authorization=f"Bearer {PROVIDER_SECRET}"))
    assert res.status_code == 200
    res.close()  # the call is recorded when its body is done
    broken_app.extensions["portico"].log_store.flush(timeout_s=5)
    assert dropped_total() == before + 1
    assert b"portico_log_records_dropped_total" in client.get("/metrics", headers=ADMIN).data


@pytest.mark.parametrize("path", ["/admin/logs", "/admin/analytics", "/admin/dashboard"])
def test_admin_reads_of_an_unusable_log_answer_503_in_json(broken_app: Flask, path: str) -> None:
    res = broken_app.test_client().get(path, headers=ADMIN)
    assert res.status_code == 503
    body = res.get_json()
    assert body["status"] == "failure"
    assert "[logs] path" in body["message"] and "is a directory" in body["message"]
