"""Through gunicorn: no call waits behind a busy worker while another worker has a free thread (docs/decisions.md).

Before, a worker whose threads were all busy with long streams kept accepting connections from the shared
listening socket, and those waited for one of its threads while the other worker had free ones.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway, gateway_toml
from tests.integration.test_proxy_gunicorn import via

WORKERS, THREADS = 2, 4
STREAMS = 6  # fewer than the 8 threads: some worker always has a free one
EVENTS, INTERVAL_MS = 40, 100  # each stream lasts about 4 s
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def small_gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """Run a gateway of 2 workers x 4 threads."""
    gw = Gateway(gateway_toml(fake.url), workers=WORKERS, threads=THREADS)
    yield gw.start()
    gw.stop()


def open_stream(gateway: Gateway, fake: FakeProvider) -> socket.socket:
    """Start a slow streamed call on its own connection; return the socket once its first event is here."""
    headers = via(fake, "openai", **{"x-fake-events": str(EVENTS), "x-fake-event-interval-ms": str(INTERVAL_MS),
                                     "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"})
    return first_event(gateway, headers)


def first_event(gateway: Gateway, headers: dict[str, str]) -> socket.socket:
    """Send a streamed chat call on a raw socket; return the socket once its first event is here (within 2 s)."""
    body = json.dumps(CHAT).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=2)
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body)
    received = b""
    try:
        while b"data: " not in received:
            data = sock.recv(65536)
            assert data, f"the stream ended before its first event: {received[-300:]!r}"
            received += data
    except TimeoutError:
        sock.close()
        raise AssertionError("a stream got no first event within 2 s: it waited for a thread") from None
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def test_short_call_is_not_queued_behind_a_busy_worker(small_gateway: Gateway, fake_provider: FakeProvider) -> None:
    streams: list[socket.socket] = []
    try:
        for _ in range(STREAMS):
            streams.append(open_stream(small_gateway, fake_provider))  # each in flight before the next
        took = []
        for _ in range(5):
            with requests.Session() as fresh:  # a new connection each time: the kernel picks the worker
                start = time.monotonic()
                res = fresh.get(f"{small_gateway.url}/v1/models", headers=via(fake_provider, "openai"), timeout=10)
                took.append(time.monotonic() - start)
            assert res.status_code == 200, res.text
        # A queued call would wait for a stream to end (seconds); a free thread answers in milliseconds.
        assert max(took) < 0.2, [round(t, 3) for t in took]
    finally:
        for sock in streams:
            sock.close()
