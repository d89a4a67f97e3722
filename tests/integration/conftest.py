"""Integration rig: the real gunicorn (gunicorn.conf.py) in front of the real fake provider, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.settings import hash_key
from tests.conftest import GATEWAY_KEY
from tests.fakes.net import free_port
from tests.fakes.provider import FakeProvider

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-test-key-0123"


class Gateway:
    """A gunicorn process running Portico with a gateway file written for the test."""

    def __init__(self, toml: str, workers: int = 1, threads: int = 8, env: dict[str, str] | None = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="portico-it-")
        self.config = Path(self.dir.name) / "gateway.toml"
        self.logs_path = Path(self.dir.name) / "logs.sqlite"
        if "[logs]" not in toml:
            toml += f'\n[logs]\npath = "{self.logs_path}"\n'
        if "[state]" not in toml:
            toml += f'\n[state]\npath = "{Path(self.dir.name) / "state.sqlite"}"\n'
        if "[admin]" not in toml:
            toml += f'\n[admin]\nkey = "{ADMIN_KEY}"\n'
        self.config.write_text(toml)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout = Path(self.dir.name) / "stdout.log"
        self.stderr = Path(self.dir.name) / "stderr.log"
        self.env = {**os.environ, "GATEWAY_CONFIG": str(self.config), "GATEWAY_BIND": f"127.0.0.1:{self.port}",
                    "GATEWAY_WORKERS": str(workers), "GATEWAY_THREADS": str(threads), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        """Start gunicorn and wait until /healthz answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], cwd=ROOT, env=self.env,
            stdout=self.stdout.open("wb"), stderr=self.stderr.open("wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}: {self.stderr.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("gunicorn did not come up: " + self.stderr.read_text()[-2000:])

    def stop(self) -> None:
        """Stop gunicorn gracefully, then for good."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        """Return everything gunicorn and the app wrote (stdout then stderr)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def gateway_toml(fake_url: str, extra: str = "") -> str:
    """Return a gateway file with one key, loopback allowed, and catalog entries on the fake provider."""
    return f"""
[[keys]]
name = "it-team"
sha256 = "{hash_key(GATEWAY_KEY)}"

[custom_hosts]
allow = ["127.0.0.1", "localhost"]

[catalog.cohere-prod]
provider = "cohere"
api_key = "co-catalog-secret-123"
custom_host = "{fake_url}/v1"

[catalog.openai-fake]
provider = "openai"
api_key = "sk-catalog-openai-secret"
custom_host = "{fake_url}/v1"

[retry]
backoff_base_ms = 0
{extra}
"""


@pytest.fixture(scope="session")
def gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """Run one gunicorn gateway (1 worker, 8 threads) for the whole session."""
    gw = Gateway(gateway_toml(fake.url)).start()
    yield gw
    gw.stop()
