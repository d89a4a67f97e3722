"""An early refusal of a large upload reaches the client: through real nginx, and through gunicorn alone.

Before, the gateway answered a wrong key (or a 413 by Content-Length) while the body was still coming, announced
keep-alive, then closed on the unread body: the kernel reset the connection, and nginx answered its own HTML 502
(to that call, or to the next one it sent on the connection it had kept). Now the body is read and discarded up to
`[limits] max_body_bytes` before the answer; past that the answer says `Connection: close` and the worker lingers,
reading what still comes, before it closes (docs/deploy.md, Early refusals).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY
from tests.fakes.net import free_port
from tests.fakes.nginx import NginxProcess, nginx_binary
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway, gateway_toml

MIB = 1024 * 1024
LIMIT = 21 * MIB  # the gateway's [limits] max_body_bytes here
UNDER_LIMIT = 20 * MIB  # "a 20 MB upload"
OVER_LIMIT = LIMIT + MIB
TRIES = 5

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream portico {{
        server 127.0.0.1:{gateway_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;  # above the gateway's limit: nginx passes the body on
        location / {{
            proxy_pass http://portico;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering {request_buffering};
        }}
    }}
}}
"""


class Nginx(NginxProcess):
    """A real nginx in front of the gateway, configured by the test alone."""

    def __init__(self, gateway_port: int, request_buffering: str) -> None:
        super().__init__()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "nginx.conf").write_text(NGINX_CONF.format(dir=self.dir, gateway_port=gateway_port,
                                                              port=self.port, request_buffering=request_buffering))
        self.run(self.port)


@pytest.fixture(scope="module")
def refusing_gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """A gateway whose body limit is 21 MiB."""
    gw = Gateway(gateway_toml(fake.url, f"\n[limits]\nmax_body_bytes = {LIMIT}\n")).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module", params=["off", "on"], ids=["request-buffering-off", "request-buffering-on"])
def nginx(request: pytest.FixtureRequest, refusing_gateway: Gateway) -> Iterator[Nginx]:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (make test installs it)")
    proxy = Nginx(refusing_gateway.port, request.param)
    yield proxy
    proxy.stop()


def upload_headers(key: str) -> dict[str, str]:
    return {"x-portkey-api-key": key, "x-portkey-provider": "openai", "Content-Type": "application/json"}


def assert_gateway_error(res: requests.Response, status: int, proxy: Nginx) -> dict:
    """Check that the answer is the gateway's JSON error (not nginx's HTML page) and return its body."""
    assert res.status_code == status, f"{res.status_code} {res.text[:200]!r}\nnginx: {proxy.errors()}"
    assert res.headers["content-type"] == "application/json"
    assert "x-portkey-trace-id" in res.headers
    body = res.json()
    assert body["status"] == "failure"
    return body


def test_a_wrong_key_on_a_20_mb_upload_gets_the_gateways_401_through_nginx(nginx: Nginx) -> None:
    upload = b"x" * UNDER_LIMIT
    for _ in range(TRIES):
        res = requests.post(f"{nginx.url}/v1/chat/completions", data=upload, headers=upload_headers("wrong-key"),
                            timeout=30)
        assert_gateway_error(res, 401, nginx)


def test_a_body_over_the_limit_gets_the_gateways_413_through_nginx(nginx: Nginx) -> None:
    upload = b"x" * OVER_LIMIT
    for _ in range(TRIES):
        res = requests.post(f"{nginx.url}/v1/chat/completions", data=upload, headers=upload_headers(GATEWAY_KEY),
                            timeout=30)
        body = assert_gateway_error(res, 413, nginx)
        assert str(LIMIT) in body["message"]


# Through gunicorn alone: a raw client sends the head and 2 MB of body, then reads the answer.

TWO_MB = 2 * 1000 * 1000
JSON = {"Content-Type": "application/json"}
REFUSALS = {
    "401 wrong key": ("POST", "/v1/chat/completions", upload_headers("wrong-key"), 401),
    "400 dot segments": ("POST", "/v1/a/%2e%2e/b", JSON, 400),
    "404 unknown route": ("POST", "/v2/nothing-here", JSON, 404),
    "405 wrong method": ("POST", "/healthz", JSON, 405),
}


def send_upload(sock: socket.socket, method: str, path: str, headers: dict[str, str], size: int) -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                  f"Content-Length: {size}\r\n\r\n").encode())
    block = b"x" * (256 * 1024)
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sock.sendall(piece)
        sent += len(piece)


def send_chunked_upload(sock: socket.socket, headers: dict[str, str], size: int) -> None:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                  "Transfer-Encoding: chunked\r\n\r\n").encode())
    block = b"x" * (256 * 1024)
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sent += len(piece)
    sock.sendall(b"0\r\n\r\n")


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole answer (status, headers, Content-Length body) off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside the answer's body: {body!r}"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_an_early_refusal_of_a_2_mb_body_is_read_and_the_connection_stays_usable(
        refusing_gateway: Gateway, refusal: str) -> None:
    method, path, headers, status = REFUSALS[refusal]
    with socket.create_connection(("127.0.0.1", refusing_gateway.port), timeout=10) as sock:
        send_upload(sock, method, path, headers, TWO_MB)  # a reset here would raise ConnectionResetError
        got, answer_headers, body = read_answer(sock)
        assert got == status, body
        assert answer_headers["content-type"] == "application/json"
        assert json.loads(body)["status"] == "failure"
        assert answer_headers["connection"] == "keep-alive"
        # The body was read to its end, so the connection carries the next request.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(sock)[0] == 200


def test_a_413_by_content_length_closes_cleanly_after_the_client_reads_it(refusing_gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", refusing_gateway.port), timeout=10) as sock:
        send_upload(sock, "POST", "/v1/chat/completions", upload_headers(GATEWAY_KEY), OVER_LIMIT)
        status, headers, body = read_answer(sock)
        assert status == 413 and str(LIMIT) in json.loads(body)["message"]
        assert headers["connection"] == "close"
        assert sock.recv(65536) == b""  # a FIN after the answer, not a reset


def test_a_wrong_key_on_a_chunked_body_is_read_and_the_connection_stays_usable(refusing_gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", refusing_gateway.port), timeout=10) as sock:
        send_chunked_upload(sock, upload_headers("wrong-key"), TWO_MB)
        status, headers, _ = read_answer(sock)
        assert (status, headers["connection"]) == (401, "keep-alive")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(sock)[0] == 200


def test_a_wrong_key_on_a_chunked_body_over_the_limit_closes_cleanly(refusing_gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", refusing_gateway.port), timeout=10) as sock:
        send_chunked_upload(sock, upload_headers("wrong-key"), OVER_LIMIT)
        status, headers, _ = read_answer(sock)
        assert (status, headers["connection"]) == (401, "close")
        assert sock.recv(65536) == b""
