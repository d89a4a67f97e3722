"""Through gunicorn: streams relayed by the worker's event loop (docs/decisions.md, Streams).

A thread serves a streamed call up to its first bytes; the poller relays the rest. So a worker holds more
streams than it has threads, each upstream framing arrives byte for byte, the upstream connection goes
back to its pool, and breaks, silence and slow clients end a stream as they did in a thread.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway, gateway_toml
from tests.integration.test_proxy_gunicorn import via
from tests.integration.test_stream_accounting_gunicorn import logged
from tests.integration.test_worker_fairness import CHAT, first_event

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class RawUpstream:
    """A loopback upstream that answers each request with scripted raw bytes, noting which connection it came on.

    A script is a list of byte strings written in turn, a float (seconds to sleep), or None (close the
    connection there); after the script the connection waits for the next request.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.scripts: list[list[bytes | float | None]] = []
        self.seen: list[int] = []  # the connection number of each request
        self.lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, *script: bytes | float | None) -> None:
        """Queue the script for the next request."""
        with self.lock:
            self.scripts.append(list(script))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        with sock:
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffered) < length:
                    buffered += sock.recv(65536)
                buffered = buffered[length:]
                with self.lock:
                    self.seen.append(number)
                    script = self.scripts.pop(0)
                for step in script:
                    if step is None:
                        return
                    if isinstance(step, float):
                        time.sleep(step)
                    else:
                        try:
                            sock.sendall(step)
                        except OSError:
                            return


def chunk(data: bytes, extension: bytes = b"") -> bytes:
    """Return data as one HTTP/1.1 chunk."""
    return b"%x%b\r\n%b\r\n" % (len(data), extension, data)


def event(n: int) -> bytes:
    """Return the nth SSE event of a chat stream."""
    return b'data: {"choices":[{"index":0,"delta":{"content":"%d"}}]}\n\n' % n


DONE = b"data: [DONE]\n\n"


@pytest.fixture(scope="module")
def raw_upstream() -> RawUpstream:
    return RawUpstream()


@pytest.fixture(scope="module")
def small_gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """Run a gateway of 1 worker x 2 threads, with a 1 s upstream read timeout."""
    gw = Gateway(gateway_toml(fake.url, "[upstream]\nread_timeout_ms = 1000\n"), workers=1, threads=2)
    yield gw.start()
    gw.stop()


def raw_headers(upstream: RawUpstream, trace_id: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai", "x-portkey-trace-id": trace_id,
            "x-portkey-custom-host": upstream.url, "Authorization": "Bearer sk-relay-test"}


def stream(gateway: Gateway, headers: dict[str, str], timeout: float = 10) -> requests.Response:
    return requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers, stream=True,
                         timeout=timeout)


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    sock.settimeout(15)
    while not received.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        assert data, received[-300:]
        received += data
    return received


def test_a_worker_holds_more_streams_than_threads(small_gateway: Gateway, fake_provider: FakeProvider) -> None:
    # 8 streams of 3 s each on 2 threads: in a thread each, the third would wait 3 s for its first event.
    headers = via(fake_provider, "openai", **{"x-fake-events": "30", "x-fake-event-interval-ms": "100",
                                              "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"})
    socks = [first_event(small_gateway, headers) for _ in range(8)]
    try:
        start = time.monotonic()
        res = requests.get(f"{small_gateway.url}/v1/models", headers=via(fake_provider, "openai"), timeout=10)
        assert res.status_code == 200 and time.monotonic() - start < 1.0
        for sock in socks:
            body = read_to_end(sock)
            assert body.count(b"data: ") == 31 and b"data: [DONE]" in body  # 30 events and [DONE]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("framing", ["chunked, split at every byte", "content-length", "until close"])
def test_each_framing_arrives_byte_for_byte(small_gateway: Gateway, raw_upstream: RawUpstream,
                                            framing: str) -> None:
    payload = b"".join(event(n) for n in range(5)) + DONE
    if framing == "content-length":
        script: list[bytes | float | None] = [SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(payload) + payload[:40],
                                              0.05, payload[40:]]
    elif framing == "until close":
        script = [SSE_HEAD + b"Connection: close\r\n\r\n" + payload[:40], 0.05, payload[40:], None]
    else:
        # Extensions, a trailer, and every byte after the first event written on its own.
        framed = chunk(payload[:60], b";ext=1") + chunk(payload[60:]) + b"0\r\nx-trailer: 1\r\n\r\n"
        script = [SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(event(0))]
        script += [framed[i:i + 1] for i in range(len(framed))]
        payload = event(0) + payload
    raw_upstream.answer(*script)
    trace_id = f"framing-{uuid.uuid4()}"
    with stream(small_gateway, raw_headers(raw_upstream, trace_id)) as res:
        assert res.status_code == 200
        assert res.raw.read() == payload
    row = logged(small_gateway, trace_id)
    assert (row["status"], row["error"]) == (200, None), row


def test_the_upstream_connection_is_reused_after_a_relayed_stream(small_gateway: Gateway,
                                                                  raw_upstream: RawUpstream) -> None:
    answer = SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(event(1))
    for _ in range(3):
        raw_upstream.answer(answer, 0.05, chunk(DONE) + b"0\r\n\r\n")
    seen = len(raw_upstream.seen)
    for _ in range(3):
        with stream(small_gateway, raw_headers(raw_upstream, f"reuse-{uuid.uuid4()}")) as res:
            assert res.raw.read() == event(1) + DONE
    assert len(set(raw_upstream.seen[seen:])) == 1, raw_upstream.seen[seen:]


def test_an_upstream_that_breaks_off_cuts_the_client(small_gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(event(1)), 0.1,
                        b"40\r\ndata: only part of", None)
    trace_id = f"broken-{uuid.uuid4()}"
    with stream(small_gateway, raw_headers(raw_upstream, trace_id)) as res, \
            pytest.raises(requests.exceptions.ChunkedEncodingError):
        b"".join(res.iter_content(65536))
    row = logged(small_gateway, trace_id)
    assert row["error"].startswith("Upstream host 127.0.0.1 broke off its answer"), row


def test_a_silent_upstream_ends_at_the_read_timeout(small_gateway: Gateway, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(event(1)), 4.0, None)
    trace_id = f"silent-{uuid.uuid4()}"
    start = time.monotonic()
    with stream(small_gateway, raw_headers(raw_upstream, trace_id)) as res, \
            pytest.raises(requests.exceptions.ChunkedEncodingError):
        b"".join(res.iter_content(65536))
    assert time.monotonic() - start < 3.5  # the 1 s read timeout, checked about once a second
    row = logged(small_gateway, trace_id)
    assert row["error"] == "Upstream host 127.0.0.1 broke off its answer: timed out", row


def test_a_slow_reader_gets_the_whole_stream(small_gateway: Gateway, raw_upstream: RawUpstream) -> None:
    # 16 MiB of events at once: more than the sockets and the relay's buffer hold while the client waits.
    payload = b"".join(b"data: %s\n\n" % (b"x" * 4000) for _ in range(4096))
    raw_upstream.answer(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                        + b"".join(chunk(payload[i:i + 65536]) for i in range(0, len(payload), 65536)) + b"0\r\n\r\n")
    trace_id = f"slow-{uuid.uuid4()}"
    with stream(small_gateway, raw_headers(raw_upstream, trace_id)) as res:
        time.sleep(0.6)
        assert hashlib.sha256(res.raw.read()).digest() == hashlib.sha256(payload).digest()
    row = logged(small_gateway, trace_id)
    assert (row["status"], row["error"]) == (200, None), row
