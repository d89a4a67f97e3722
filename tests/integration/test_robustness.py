"""What must never happen through gunicorn: leaked secrets, lost streams, bodies in RAM, bad start-ups."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ROOT, Gateway, gateway_toml
from tests.integration.test_proxy_gunicorn import via


def access_lines(gateway: Gateway) -> list[dict]:
    """Return the JSON access lines the gateway wrote so far."""
    lines = []
    for line in gateway.stdout.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def wait_for_line(gateway: Gateway, trace_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in access_lines(gateway):
            if line["trace_id"] == trace_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access line for {trace_id}")


def test_one_json_access_line_per_call(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/rerank?key=query-secret-value", json={"query": "q", "documents": ["a"]},
                        headers=via(fake_provider, **{"x-portkey-trace-id": "trace-access-1"}))
    assert res.status_code == 200
    assert res.headers["x-portkey-trace-id"] == "trace-access-1"
    line = wait_for_line(gateway, "trace-access-1")
    assert line["key"] == "it-team" and line["provider"] == "cohere"
    assert (line["method"], line["path"], line["status"], line["upstream_status"]) == ("POST", "/v1/rerank", 200, 200)
    assert line["duration_ms"] >= line["upstream_ms"] >= 0
    assert line["bytes_out"] == len(res.content) and line["bytes_in"] > 0
    assert "query-secret-value" not in json.dumps(line)
    assert sum(1 for x in access_lines(gateway) if x["trace_id"] == "trace-access-1") == 1


def test_secrets_never_reach_logs(gateway: Gateway, fake_provider: FakeProvider) -> None:
    calls = [
        ("POST", "/v1/rerank", via(fake_provider)),
        ("POST", "/v1/rerank", via(fake_provider, **{"x-fake-status": "500"})),
        ("GET", "/v1/x", via(fake_provider, **{"x-fake-reset": "1"})),
        ("GET", "/v1/x", via(fake_provider, **{"x-fake-garbage": "1"})),
        ("POST", "/v1/rerank", {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@cohere-prod"}),
        ("POST", "/v1/rerank", {"x-portkey-api-key": GATEWAY_KEY + "x", "Authorization": f"Bearer {PROVIDER_SECRET}"}),
        ("POST", "/v1/rerank", {**via(fake_provider), "x-portkey-custom-host": f"http://u:{PROVIDER_SECRET}@10.0.0.1"}),
    ]
    traces = [f"secrets-{uuid.uuid4()}" for _ in calls]
    for (method, path, headers), trace in zip(calls, traces, strict=True):
        try:
            requests.request(method, gateway.url + path + f"?key={PROVIDER_SECRET}", json={},
                             headers={**headers, "x-portkey-trace-id": trace})
        except requests.RequestException:
            pass  # the reset call cuts the connection; that is what it tests
    for trace in traces:  # every call's line is out, so the absence checks below look at what was written
        wait_for_line(gateway, trace)
    logs = gateway.logs()
    for secret in (PROVIDER_SECRET, GATEWAY_KEY, "co-catalog-secret-123", "sk-catalog-openai-secret"):
        assert secret not in logs
    assert "Traceback" not in logs


def test_client_leaving_mid_stream_frees_the_upstream(gateway: Gateway) -> None:
    with FakeProvider() as own:
        headers = via(own, "openai", **{"x-fake-events": "40", "x-fake-event-interval-ms": "100"})
        body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            sock.sendall(f"POST /v1/proxy/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n{head}\r\n{body}".encode())
            received = b""
            while b"data:" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert own.open_connections == 1
        deadline = time.monotonic() + 2  # the stream would run 4 s if nobody noticed
        while own.open_connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert own.open_connections == 0
    assert requests.get(f"{gateway.url}/healthz", timeout=2).status_code == 200


def worker_rss_kb(gateway: Gateway) -> int:
    """Return the RSS of the gateway's (single) worker process."""
    assert gateway.proc is not None
    children = Path(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def test_100_mb_upload_is_spooled_not_held_in_ram(gateway: Gateway, fake_provider: FakeProvider) -> None:
    size = 100 * 1024 * 1024
    block = os.urandom(1 << 20)

    def body():
        for _ in range(size // len(block)):
            yield block
    before = worker_rss_kb(gateway)
    res = requests.put(f"{gateway.url}/v1/files/upload", data=body(),
                       headers={**via(fake_provider), "Content-Type": "application/octet-stream"})
    assert res.status_code == 200
    assert res.json()["body_length"] == size
    assert worker_rss_kb(gateway) - before < 40 * 1024


@pytest.fixture(scope="module")
def small_limit_gateway(fake: FakeProvider):
    gw = Gateway(gateway_toml(fake.url, "[limits]\nmax_body_bytes = 1000000\n")).start()
    yield gw
    gw.stop()


def test_body_over_the_limit_is_413_and_never_sent(small_limit_gateway: Gateway, fake_provider: FakeProvider) -> None:
    def chunked():
        for _ in range(20):
            yield b"x" * 100_000
    for data in (b"x" * 1_000_001, chunked()):
        res = requests.post(f"{small_limit_gateway.url}/v1/uploads", data=data, headers=via(fake_provider))
        assert res.status_code == 413
        assert res.json()["status"] == "failure"
    assert fake_provider.requests == []


def start_failure(env: dict[str, str], tmp_path: Path, toml: str | None = None) -> subprocess.CompletedProcess:
    if toml is not None:
        (tmp_path / "gateway.toml").write_text(toml)
        env = {**env, "GATEWAY_CONFIG": str(tmp_path / "gateway.toml")}
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=30)


def test_open_gateway_refuses_to_bind_off_loopback(tmp_path: Path) -> None:
    done = start_failure({"GATEWAY_BIND": "0.0.0.0:0"}, tmp_path, toml="")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no gateway keys" in lines[0] and "0.0.0.0:0" in lines[0]


@pytest.mark.parametrize("toml, fragment", [
    ("[limits]\nmax_body_bytes = 'big'\n", "limits.max_body_bytes"),
    ("[[keys]]\nname = 'a'\nkey = 'env:PORTICO_TEST_UNSET_VAR'\n", "PORTICO_TEST_UNSET_VAR"),
    ("[catalog.x]\nprovider = 'nope'\n", "catalog.x.provider"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_gateway_file_stops_start_up_with_one_line(tmp_path: Path, toml: str, fragment: str) -> None:
    done = start_failure({}, tmp_path, toml=toml)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert fragment in done.stderr
    assert "gateway.toml" in done.stderr
