"""The gateway file through gunicorn: strict at start, SIGHUP with a good and a bad file, and binding."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from app.server.worker import CUT_MARGIN_S
from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ROOT, Gateway, gateway_toml
from tests.integration.test_hardening_worker import read_answer, stream
from tests.integration.test_robustness import start_failure

RERANK = {"query": "q", "documents": ["a"]}


def rerank(gw: Gateway, provider: str) -> int:
    """Return the status of a rerank call through the gateway with x-portkey-provider: provider."""
    res = requests.post(f"{gw.url}/v1/rerank", json=RERANK, timeout=5,
                        headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider})
    return res.status_code


def workers(gw: Gateway) -> set[int]:
    """Return the pids of the master's worker processes."""
    assert gw.proc is not None
    return {int(pid) for pid in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sighup_takes_a_good_file_keeps_the_running_settings_on_a_bad_one_and_streams_finish(
        fake: FakeProvider) -> None:
    gw = Gateway(gateway_toml(fake.url), workers=1, threads=4).start()
    assert gw.proc is not None
    try:
        first = gw.config.read_text()
        assert rerank(gw, "@added") == 400
        in_flight = stream(gw, fake, "reload-stream", events=20)  # runs 2 s, across the reload
        added = f'[catalog.added]\nprovider = "cohere"\napi_key = "co-added"\ncustom_host = "{fake.url}/v1"\n'
        gw.config.write_text(first + added)
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: rerank(gw, "@added") == 200, "the new catalog entry")
        with in_flight:
            rest = read_answer(in_flight, 5, until=b"0\r\n\r\n")
        assert b"[DONE]" in rest and rest.endswith(b"0\r\n\r\n")  # the whole stream, properly ended

        before = workers(gw)  # the reload's worker, and the old one if it is still finishing
        gw.config.write_text(first + "\n[admn]\nkey = 'x'\n")  # broken, and without the added entry
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: bool(workers(gw)) and not workers(gw) & before, "the second reload's worker")
        assert rerank(gw, "@added") == 200  # the last good settings, not the file on disk
        assert gw.proc.poll() is None
        refused = [line for line in gw.stderr.read_text().splitlines() if "reload refused" in line]
        assert len(refused) == 1, refused
        assert f"{gw.config}: admn: unknown section; did you mean `admin`?" in refused[0]
        assert "Traceback" not in gw.logs()
    finally:
        gw.stop()


def test_a_misspelt_section_stops_gunicorn_with_one_line(tmp_path: Path) -> None:
    done = start_failure({"GATEWAY_BIND": "127.0.0.1:0"}, tmp_path, toml="[[key]]\nname = 'a'\nkey = 'k'\n")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [f"portico: {tmp_path / 'gateway.toml'}: key: unknown section; did you mean `keys`?"]


class UnixConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def unix_call(path: str, method: str, url: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> int:
    """Return the status of one call over the unix socket at path."""
    conn = UnixConnection(path)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        res = conn.getresponse()
        res.read()
        return res.status
    finally:
        conn.close()


def test_a_unix_socket_bind_serves(fake: FakeProvider) -> None:
    gw = Gateway(gateway_toml(fake.url), workers=1, threads=4)
    path = str(Path(gw.dir.name) / "gw.sock")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], cwd=ROOT,
                            env={**gw.env, "GATEWAY_BIND": f"unix:{path}"},
                            stdout=gw.stdout.open("wb"), stderr=gw.stderr.open("wb"))
    gw.proc = proc
    try:
        def healthy() -> bool:
            assert proc.poll() is None, gw.logs()
            try:
                return unix_call(path, "GET", "/healthz") == 200
            except OSError:
                return False
        wait_until(healthy, "/healthz on the unix socket", timeout=20)
        status = unix_call(path, "POST", "/v1/rerank", body=b'{"query": "q", "documents": ["a"]}', headers={
            "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@cohere-prod",
            "Content-Type": "application/json"})
        assert status == 200
    finally:
        gw.stop()
    assert "Traceback" not in gw.logs()


def test_a_bind_without_a_port_gets_8787_and_the_graceful_timeout_is_gateways(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "gateway.toml"), "GATEWAY_BIND": "127.0.0.1",
           "GATEWAY_GRACEFUL_TIMEOUT": "7"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    printed = {name.strip(): value.strip() for name, _, value in
               (line.partition(" = ") for line in done.stdout.splitlines())}
    assert printed["bind"] == "['127.0.0.1:8787']"
    assert printed["graceful_timeout"] == str(7 + CUT_MARGIN_S)
