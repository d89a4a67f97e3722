"""The deploy kit's nginx site files, run by a real nginx in front of a real gateway (docs/deploy.md, nginx).

deploy/nginx/portico.conf and portico-tls.conf are used as an operator copies them; the test only moves ports, log
files and certificates into a temp dir (`site_for_test`). The 70 s stream (a silence longer than nginx's default
proxy_read_timeout) runs in the background from this module's first test to the end of the session, so it overlaps
with the rest of the suite; its outcome is checked when the session ends (see `long_stream`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from app.settings import DEFAULT_MAX_BODY_BYTES
from tests.conftest import GATEWAY_KEY
from tests.fakes.net import free_port
from tests.fakes.nginx import NginxProcess, nginx_binary
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ROOT, Gateway, gateway_toml

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it from Debian)")

SITE = ROOT / "deploy" / "nginx" / "portico.conf"
SITE_TLS = ROOT / "deploy" / "nginx" / "portico-tls.conf"
NGINX_DEFAULT_READ_TIMEOUT_S = 60
SILENCE_S = 65  # a model "thinking" longer than nginx's default proxy_read_timeout
CLIENT_ADDRESS = "127.0.0.2"  # loopback too, but not nginx's address (127.0.0.1), which the gateway trusts
SPOOFED = "203.0.113.7"
MIB = 1024 * 1024

TOP_CONF = """
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"""


def _swap(text: str, old: str, new: str) -> str:
    """Replace old (which must be in the site file: the test follows the file, not a copy of it) by new."""
    assert old in text, f"the site file no longer contains {old!r}; update site_for_test"
    return text.replace(old, new)


def site_for_test(text: str, workdir: Path, gateway_port: int, port: int, tls_port: int | None = None) -> str:
    """Return the site file with loopback ports, and logs and certificates in workdir; nothing else changes."""
    text = _swap(text, "server 127.0.0.1:8787;", f"server 127.0.0.1:{gateway_port};")
    text = _swap(text, "listen 80;", f"listen 127.0.0.1:{port};")
    text = _swap(text, "listen [::]:80;", "")
    text = _swap(text, "/var/log/nginx/", f"{workdir}/")
    if tls_port is not None:
        text = _swap(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;")
        text = _swap(text, "listen [::]:443 ssl http2;", "")
        text = _swap(text, "/etc/letsencrypt/live/portico.example.com/", f"{workdir}/")
    return text


class Nginx(NginxProcess):
    """A real nginx (daemon off, one worker) serving one of the deploy site files on loopback."""

    def __init__(self, site: Path, gateway_port: int, tls: bool = False) -> None:
        super().__init__()
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        if tls:
            write_test_certificate(self.dir)
        (self.dir / "site.conf").write_text(site_for_test(site.read_text(), self.dir, gateway_port, self.port,
                                                          self.tls_port))
        # As root, nginx's worker would run as nobody; run it as the test's user instead.
        user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(TOP_CONF.format(dir=self.dir, user=user))
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Start nginx and wait until it accepts connections."""
        self.run(self.tls_port or self.port)
        return self

    def access_log(self) -> str:
        """Return the site's access log (the log_format of the site file)."""
        path = self.dir / "portico.access.log"
        return path.read_text(errors="replace") if path.exists() else ""


def write_test_certificate(workdir: Path) -> None:
    """Write a self-signed certificate for 127.0.0.1 as fullchain.pem / privkey.pem (the site file's names)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (workdir / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class Rig:
    """The fake provider, a gateway trusting nginx's address, and nginx with deploy/nginx/portico.conf."""

    def __init__(self) -> None:
        self.fake = FakeProvider().start()
        self.gateway = Gateway(gateway_toml(self.fake.url, '\n[proxy]\ntrusted_proxies = ["127.0.0.1"]\n'))
        self.nginx = Nginx(SITE, self.gateway.port)

    def start(self) -> Rig:
        """Start the gateway, then nginx."""
        self.gateway.start()
        self.nginx.start()
        return self

    def stop(self) -> None:
        """Stop the fake first (a stream still waiting on it then ends at once), nginx, then the gateway."""
        self.fake.stop()
        self.nginx.stop()
        self.gateway.stop()


def catalog(**extra: str) -> dict[str, str]:
    """Return headers that send a call through the gateway to the fake, as an OpenAI catalog entry."""
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@openai-fake", **extra}


def stream_headers(events: int, interval_ms: int) -> dict[str, str]:
    """Return headers for a streamed chat whose events the fake writes interval_ms apart."""
    return catalog(**{"x-fake-events": str(events), "x-fake-event-interval-ms": str(interval_ms),
                      "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"})


CHAT = {"model": "gpt-x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


class LongStream:
    """A streamed call through nginx: one event, SILENCE_S seconds of nothing, then [DONE]; read in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.status: int | None = None
        self.events: list[tuple[float, bytes]] = []
        self.error: str | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, name="long-stream", daemon=True)

    def _read(self) -> None:
        # x-fake-events 0: the finish chunk at once, then [DONE] after the interval.
        try:
            with requests.post(f"{self.url}/v1/chat/completions", json=CHAT, stream=True,
                               headers=stream_headers(0, SILENCE_S * 1000), timeout=(5, SILENCE_S + 30)) as res:
                self.status = res.status_code
                for line in res.iter_lines():
                    if line.startswith(b"data:"):
                        self.events.append((time.monotonic(), line))
                        self.first.set()
        except requests.RequestException as err:
            self.error = repr(err)
        finally:
            self.first.set()

    def problem(self) -> str | None:
        """Return why the stream does not show a silence over 60 s surviving nginx, or None when it does."""
        if self.error or self.status != 200:
            return f"status {self.status}, error {self.error}, events {[e for _, e in self.events]}"
        if not self.events or self.events[-1][1] != b"data: [DONE]":
            return f"the stream was cut before [DONE]: {[e for _, e in self.events]}"
        silence = self.events[-1][0] - self.events[0][0]
        if silence <= NGINX_DEFAULT_READ_TIMEOUT_S:
            return f"the silence lasted only {silence:.1f} s, which does not test proxy_read_timeout"
        return None


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    """Run the fake, the gateway and nginx for the session (the long stream needs them until the end)."""
    running = Rig().start()
    yield running
    running.stop()


@pytest.fixture(scope="session", autouse=True)
def long_stream(request: pytest.FixtureRequest) -> Iterator[LongStream | None]:
    """Start the long stream with this module's first test; check it at the end of the session.

    A failure shows as an error at the teardown of the session's last test, with the message below.
    """
    wanted = any(item.name == "test_a_silence_longer_than_60_s_does_not_cut_the_stream"
                 for item in request.session.items)
    if not wanted:
        yield None
        return
    running: Rig = request.getfixturevalue("rig")
    stream = LongStream(running.nginx.url)
    stream.thread.start()
    yield stream
    if request.session.testsfailed and stream.thread.is_alive():
        return  # the run failed already: do not hold it for the stream
    stream.thread.join(SILENCE_S + 60)
    problem = stream.problem()
    if problem:
        pytest.fail(f"test_deploy_nginx: a {SILENCE_S} s silence cut the stream through nginx: {problem}")


def test_a_silence_longer_than_60_s_does_not_cut_the_stream(long_stream: LongStream | None) -> None:
    """The stream's first event arrives through nginx; the end (after the silence) is checked at session end."""
    assert long_stream is not None
    assert long_stream.first.wait(15), "no first event through nginx"
    assert long_stream.status == 200 and long_stream.events, long_stream.error


def test_sse_events_reach_the_client_as_the_upstream_sends_them(rig: Rig) -> None:
    start = time.monotonic()
    arrivals = []
    with requests.post(f"{rig.nginx.url}/v1/chat/completions", json=CHAT, headers=stream_headers(4, 200),
                       stream=True, timeout=10) as res:
        assert res.status_code == 200
        assert res.headers["Content-Type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 5  # 4 content chunks, the finish chunk, [DONE]
    gaps = [b - a for a, b in zip(arrivals[:4], arrivals[1:5], strict=True)]
    assert all(gap > 0.12 for gap in gaps), arrivals  # not held back and released together


def test_a_20_mb_body_reaches_the_provider_whole(rig: Rig) -> None:
    blob = os.urandom(20 * MIB)
    res = requests.post(f"{rig.nginx.url}/v1/files/raw", data=blob, timeout=60,
                        headers=catalog(**{"Content-Type": "application/octet-stream"}))
    assert res.status_code == 200, res.text[:500]
    assert res.json()["body_length"] == len(blob)
    assert res.json()["body_sha256"] == hashlib.sha256(blob).hexdigest()


def test_a_body_over_the_gateway_limit_is_refused_by_nginx_with_json(rig: Rig) -> None:
    calls_before = len(rig.fake.requests)
    conn = http.client.HTTPConnection("127.0.0.1", rig.nginx.port, timeout=10)
    conn.putrequest("POST", "/v1/files/raw")
    for name, value in catalog(**{"Content-Type": "application/octet-stream"}).items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(DEFAULT_MAX_BODY_BYTES + 1))  # one byte over [limits] max_body_bytes
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413
    assert res.getheader("Content-Type") == "application/json"
    assert json.loads(res.read())["status"] == "failure"
    assert len(rig.fake.requests) == calls_before


def test_the_client_ip_is_the_address_nginx_saw_not_a_forwarded_claim(rig: Rig) -> None:
    # nginx appends the address it saw (127.0.0.2) to the client's X-Forwarded-For; the gateway trusts only
    # nginx (127.0.0.1), so the rightmost untrusted hop is the client: the spoofed claim is not taken.
    conn = http.client.HTTPConnection("127.0.0.1", rig.nginx.port, timeout=10,
                                      source_address=(CLIENT_ADDRESS, 0))
    conn.request("GET", "/v1/models", headers=catalog(**{"X-Forwarded-For": SPOOFED}))
    res = conn.getresponse()
    res.read()
    assert res.status == 200
    trace_id = res.getheader("x-portkey-trace-id")
    line = wait_for_access_line(rig.gateway, trace_id)
    assert line["client_ip"] == CLIENT_ADDRESS, line
    assert wait_for(lambda: f"{CLIENT_ADDRESS} [" in rig.nginx.access_log()), rig.nginx.access_log()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Return True once condition holds (logs are written a moment after the answer), False after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_access_line(gateway: Gateway, trace_id: str | None, timeout: float = 5.0) -> dict:
    """Return the gateway's JSON access line for a trace id (lines are written by a background thread)."""
    assert trace_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text in gateway.stdout.read_text(errors="replace").splitlines():
            if trace_id in text and text.startswith("{"):
                return dict(json.loads(text))
        time.sleep(0.05)
    raise AssertionError(f"no access line for {trace_id}: {gateway.logs()[-2000:]}")


def test_paths_and_queries_reach_the_gateway_as_written(rig: Rig) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", rig.nginx.port, timeout=10)
    conn.request("GET", "/v1/a//b%20c?x=%2F&y=a+b", headers=catalog())
    res = conn.getresponse()
    seen = json.loads(res.read())  # the fake's echo of what it received
    assert res.status == 200
    assert (seen["path"], seen["query"]) == ("/v1/a//b%20c", "x=%2F&y=a+b")
    # nginx neither resolves dot segments nor decodes an encoded slash: the gateway sees them, and refuses
    # them with its own JSON (a normalised path could have reached another route).
    for path in ("/v1/a/../b", "/v1/a%2F..%2Fb"):
        conn.request("GET", path, headers=catalog())
        res = conn.getresponse()
        assert res.status == 400, path
        assert json.loads(res.read())["message"].startswith("Invalid path"), path


def test_the_access_log_has_no_query_string(rig: Rig) -> None:
    secret = "AIzaSy-query-key-in-the-url-0123"
    res = requests.get(f"{rig.nginx.url}/v1/models?key={secret}", headers=catalog(), timeout=10)
    assert res.status_code == 200
    trace = f"trace={res.headers['x-portkey-trace-id']}"  # ties the line to the gateway's access line
    assert wait_for(lambda: trace in rig.nginx.access_log()), rig.nginx.access_log()
    line = next(line for line in rig.nginx.access_log().splitlines() if trace in line)
    assert '"GET /v1/models HTTP/1.1" 200' in line
    assert secret not in rig.nginx.access_log()


def test_the_tls_site_terminates_tls_and_redirects_plain_http(rig: Rig) -> None:
    tls = Nginx(SITE_TLS, rig.gateway.port, tls=True).start()
    try:
        res = requests.get(f"https://127.0.0.1:{tls.tls_port}/healthz", verify=str(tls.dir / "fullchain.pem"),
                           timeout=10)
        assert res.status_code == 200 and res.json()["status"] == "ok"
        moved = requests.post(f"{tls.url}/v1/chat/completions?x=1", json=CHAT, allow_redirects=False, timeout=10)
        assert moved.status_code == 308  # a POST stays a POST, with its body
        assert moved.headers["Location"] == "https://127.0.0.1/v1/chat/completions?x=1"
    finally:
        tls.stop()


def test_both_site_files_proxy_the_same_way() -> None:
    def proxy_block(path: Path) -> str:
        text = path.read_text()
        return text[text.index("location / {"):text.index("location @portico_too_large")]

    assert proxy_block(SITE) == proxy_block(SITE_TLS)
