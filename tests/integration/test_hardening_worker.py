"""The gunicorn worker under slow clients, at shutdown, and on a public socket with no keys (docs/deploy.md)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fakes.net import free_port
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ROOT, Gateway, gateway_toml
from tests.integration.test_proxy_gunicorn import via

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def slow_gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """Run a small gateway (2 workers x 4 threads) with short client read deadlines."""
    gw = Gateway(gateway_toml(fake.url), workers=2, threads=4,
                 env={"GATEWAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S), "GATEWAY_BODY_TIMEOUT": str(BODY_TIMEOUT_S)})
    yield gw.start()
    gw.stop()


class Trickle:
    """Send data on each socket one byte per interval (the first at once), until done or closed."""

    def __init__(self, socks: list[socket.socket], interval_s: float, data: bytes) -> None:
        self.socks = socks
        self.interval_s = interval_s
        self.data = data
        self.stop = threading.Event()
        self._send(0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def connect(cls, port: int, count: int, interval_s: float, data: bytes) -> Trickle:
        """Open count connections and trickle data on each."""
        return cls([socket.create_connection(("127.0.0.1", port)) for _ in range(count)], interval_s, data)

    def _send(self, i: int) -> None:
        for sock in self.socks:
            try:
                sock.send(self.data[i:i + 1])
            except OSError:
                pass

    def _run(self) -> None:
        for i in range(1, len(self.data)):
            if self.stop.wait(self.interval_s):
                return
            self._send(i)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def read_answer(sock: socket.socket, timeout_s: float, until: bytes | None = None) -> bytes:
    """Read until the server closes the connection (or what came ends with until), or timeout_s passes."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if until is not None and data.endswith(until):
            break
    return data


def json_body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_slow_header_senders_do_not_hold_threads(slow_gateway: Gateway) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    slow = Trickle.connect(slow_gateway.port, 120, 1.0, head)  # 120 sockets against 8 threads
    try:
        took = []
        for _ in range(20):
            started = time.monotonic()
            try:
                res = requests.get(f"{slow_gateway.url}/healthz", timeout=3)
            except requests.Timeout:
                pytest.fail("/healthz hung behind slow header senders")
            took.append(time.monotonic() - started)
            assert res.status_code == 200
        assert max(took) < 0.5, took  # p99 of 20 calls
    finally:
        slow.close()


def test_slow_header_sender_is_cut_with_408_after_the_header_deadline(slow_gateway: Gateway) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
    slow = Trickle.connect(slow_gateway.port, 1, 0.3, head)
    try:
        started = time.monotonic()
        answer = read_answer(slow.socks[0], HEADER_TIMEOUT_S + 4)
        took = time.monotonic() - started
    finally:
        slow.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json_body(answer)["status"] == "failure"
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + 2.5


def test_slow_body_sender_gets_408_and_the_connection_closes(slow_gateway: Gateway,
                                                             fake_provider: FakeProvider) -> None:
    headers = {**via(fake_provider, "openai"), "Content-Type": "application/json", "Content-Length": "313"}
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", slow_gateway.port))
    sock.sendall(head.encode())
    slow = Trickle([sock], 0.3, b'{"model": "m"' + b" " * 300)  # the body, a byte every 0.3 s
    try:
        started = time.monotonic()
        answer = read_answer(sock, BODY_TIMEOUT_S + 5)
        took = time.monotonic() - started
    finally:
        slow.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert "body" in json_body(answer)["message"]
    assert took < BODY_TIMEOUT_S + 3  # and the server closed the connection: read_answer saw its end
    assert fake_provider.requests == []


def stream(gateway: Gateway, fake: FakeProvider, trace_id: str, events: int) -> socket.socket:
    """Start a streamed (proxied) chat call, an event every 100 ms, and return its socket once the first event is in."""
    headers = via(fake, "openai", **{"x-fake-events": str(events), "x-fake-event-interval-ms": "100",
                                      "x-portkey-trace-id": trace_id})
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /v1/proxy/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n{head}\r\n{body}".encode())
    received = b""
    while b"data:" not in received:
        received += sock.recv(65536)
    return sock


def connect_outcome(port: int) -> str:
    """Return what a new client gets: refused, reset or closed promptly, or "hung" (no answer in 2 s)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return "closed" if sock.recv(65536) == b"" else "answered"
        except TimeoutError:
            return "hung"
        except ConnectionError:
            return "reset"


def test_sigterm_refuses_new_connections_finishes_streams_and_records_the_cut_ones(fake: FakeProvider) -> None:
    gw = Gateway(gateway_toml(fake.url), workers=1, threads=4, env={"GATEWAY_GRACEFUL_TIMEOUT": "2"}).start()
    try:
        short = stream(gw, fake, "hw-short", events=8)    # ends in about 0.8 s: within the graceful period
        long = stream(gw, fake, "hw-long", events=100)    # would run 10 s: cut at the end of the period
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        assert connect_outcome(gw.port) in ("refused", "reset", "closed")
        assert time.monotonic() - started < 2
        rest = read_answer(short, 3, until=b"0\r\n\r\n")
        assert b"[DONE]" in rest and rest.endswith(b"0\r\n\r\n")  # the whole stream, properly ended
        cut = read_answer(long, 8)
        assert b"[DONE]" not in cut
        gw.proc.wait(timeout=8)
    finally:
        gw.stop()
    with sqlite3.connect(gw.logs_path) as db:
        rows = dict(db.execute("SELECT trace_id, status || ' ' || coalesce(error, '') FROM requests"))
    assert rows["hw-short"].startswith("200")
    assert rows["hw-long"] == "499 shutdown"


def test_open_gateway_on_a_public_socket_does_not_serve(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")  # no keys
    port = free_port()
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "gateway.toml"),
           "GUNICORN_CMD_ARGS": f"--bind 0.0.0.0:{port}"}
    env.pop("GATEWAY_BIND", None)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("an open gateway served on 0.0.0.0")
    assert proc.returncode != 0
    refusal = [line for line in stderr.splitlines() if "no gateway keys" in line]
    assert len(refusal) == 1 and f"0.0.0.0:{port}" in refusal[0], stderr
    assert "Booting worker" not in stderr
