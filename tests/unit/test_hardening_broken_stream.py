"""A translated stream that breaks before its first event: nothing reached the client, so it is a failed attempt.

The upstream sends its response head and the start of `message_start`, then resets the connection (docs/security.md).
A fallback moves on to its next target, a retry tries again, and with nothing left the client gets the gateway's
JSON 502, never a 500 from gunicorn or a cut connection.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.net import listen_port
from tests.fakes.provider import FakeProvider

PARTIAL_EVENT = b'event: message_start\ndata: {"type":"mess'
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
CHAT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}


class BrokenUpstream:
    """A loopback upstream that answers a streamed 200, sends part of the first event, then resets (RST)."""

    def __init__(self, head: bytes = STREAM_HEAD, partial: bytes = PARTIAL_EVENT) -> None:
        self.head = head
        self.partial = partial
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", listen_port()))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="broken-upstream", daemon=True)

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:54321."""
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> BrokenUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests += 1
        conn.sendall(self.head + b"%x\r\n%b\r\n" % (len(self.partial), self.partial))
        time.sleep(0.1)  # let the gateway read what was sent: unread data may be dropped when the RST lands
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST


@pytest.fixture
def broken() -> Iterator[BrokenUpstream]:
    with BrokenUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def anthropic_at(upstream: BrokenUpstream, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "custom_host": f"{upstream.url}/v1", "api_key": PROVIDER_SECRET, **extra}


def headers(config: dict[str, Any]) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config)}


def events(text: str) -> list[str]:
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.startswith("data: ")]


def test_a_stream_broken_before_its_first_event_falls_back(client: FlaskClient, broken: BrokenUpstream,
                                                           fake: FakeProvider) -> None:
    config = {"strategy": {"mode": "fallback"}, "targets": [
        anthropic_at(broken), {"provider": "openai", "custom_host": f"{fake.url}/v1", "api_key": "sk-x"}]}
    res = client.post("/v1/chat/completions", json=CHAT, headers=headers(config))
    assert res.status_code == 200, res.get_data()[:300]
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    chunks = events(res.get_data(as_text=True))
    assert chunks[-1] == "[DONE]"
    text = "".join(json.loads(chunk)["choices"][0]["delta"].get("content") or "" for chunk in chunks[:-1]
                   if json.loads(chunk)["choices"])
    assert text.startswith("Hello from fake")  # the fake openai's streamed pieces
    assert broken.requests == 1


def test_a_stream_broken_before_its_first_event_is_retried(client: FlaskClient, broken: BrokenUpstream) -> None:
    res = client.post("/v1/chat/completions", json=CHAT,
                      headers=headers(anthropic_at(broken, retry={"attempts": 1})))
    assert res.status_code == 502
    assert broken.requests == 2


def test_with_nothing_to_fall_back_on_it_is_the_gateways_json_502(client: FlaskClient,
                                                                  broken: BrokenUpstream) -> None:
    res = client.post("/v1/chat/completions", json=CHAT, headers=headers(anthropic_at(broken)))
    assert res.status_code == 502
    assert res.headers["x-portkey-gateway-exception"] == "true"
    assert res.headers["x-portkey-provider"] == "anthropic"
    body = res.get_json()
    assert body["status"] == "failure"
    assert "127.0.0.1" in body["message"] and "broke off" in body["message"], body
