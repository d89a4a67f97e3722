"""Through gunicorn: a request-log path broken at run time never takes the gateway down (docs/security.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, ROOT, Gateway, gateway_toml

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def rerank(gw: Gateway, fake: FakeProvider) -> int:
    """Make one proxied call through the gateway; return its status."""
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
               "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}"}
    return requests.post(f"{gw.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=headers,
                         timeout=10).status_code


def worker_pids(gw: Gateway) -> list[int]:
    """Return the pids of the gunicorn master's workers."""
    assert gw.proc is not None
    return [int(p) for p in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()]


def dropped_total(gw: Gateway) -> float:
    """Return portico_log_records_dropped_total as /metrics shows it (summed over workers)."""
    for line in requests.get(f"{gw.url}/metrics", headers=ADMIN, timeout=10).text.splitlines():
        if line.startswith("portico_log_records_dropped_total "):
            return float(line.split()[1])
    raise AssertionError("portico_log_records_dropped_total is missing from /metrics")


def break_log_path(path: Path) -> None:
    """Put a directory where the request-log file (and its WAL files) were: nothing can open it any more."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)
    path.mkdir()


def test_a_worker_restarted_after_the_log_path_broke_still_serves(fake: FakeProvider) -> None:
    gw = Gateway(gateway_toml(fake.url)).start()
    try:
        assert rerank(gw, fake) == 200
        break_log_path(gw.logs_path)
        [old] = worker_pids(gw)
        os.kill(old, signal.SIGKILL)  # gunicorn boots a new worker, which finds the log unusable
        deadline = time.monotonic() + 20
        while worker_pids(gw) in ([], [old]):
            assert time.monotonic() < deadline, "gunicorn never replaced the killed worker"
            time.sleep(0.05)
        statuses = []
        while time.monotonic() < deadline and not statuses:
            try:
                statuses = [rerank(gw, fake) for _ in range(5)]
            except requests.ConnectionError:  # the new worker is still importing
                time.sleep(0.1)
        assert statuses == [200] * 5
        while dropped_total(gw) < 5:
            assert time.monotonic() < deadline, "the lost records were never counted"
            time.sleep(0.1)
        res = requests.get(f"{gw.url}/admin/logs", headers=ADMIN, timeout=10)
        assert res.status_code == 503 and "[logs] path" in res.json()["message"]
        assert gw.proc is not None and gw.proc.poll() is None  # the master is still up
        assert "Traceback" not in gw.logs()
    finally:
        gw.stop()


def test_start_up_with_a_corrupt_log_file_fails_with_one_line(fake: FakeProvider) -> None:
    gw = Gateway(gateway_toml(fake.url))
    gw.logs_path.write_bytes(os.urandom(8192))
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], cwd=ROOT,
                          env=gw.env, capture_output=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"portico: {gw.config}: [logs] path = '{gw.logs_path}': "
        "is not a SQLite database (corrupt, or another kind of file)"]
