"""Relaying a chunked upstream body: events come through whole, the connection is kept, a break is named."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import requests

from app.call.answer import read_chunk
from app.errors import UpstreamUnreachable
from app.usage.tap import UsageTap

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'data: {"model":"m","choices":[{"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'


def _chunk(data: bytes) -> bytes:
    return b"%X\r\n%s\r\n" % (len(data), data)


@pytest.fixture
def upstream() -> Iterator[tuple[socket.socket, list[bytes], list[int]]]:
    """Serve each request on a connection with the next scripted bytes (b"RST": reset the connection)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    script: list[bytes] = []
    accepted: list[int] = []

    def run() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                while script and conn.recv(65536):
                    answer = script.pop(0)
                    if answer.endswith(b"RST"):
                        conn.sendall(answer[:-3])
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        break
                    conn.sendall(answer)
                    if not answer.endswith(b"0\r\n\r\n"):
                        break

    threading.Thread(target=run, daemon=True).start()
    yield srv, script, accepted
    srv.close()


def _relay(session: requests.Session, port: int) -> bytes:
    response = session.post(f"http://127.0.0.1:{port}/", stream=True)
    body = b""
    while chunk := read_chunk(response):
        body += chunk
    response.raw.release_conn()
    return body


def test_a_chunked_stream_is_relayed_whole_and_its_connection_kept(upstream) -> None:
    srv, script, accepted = upstream
    whole = HEAD + _chunk(EVENT) + _chunk(EVENT) + _chunk(USAGE) + b"0\r\n\r\n"
    script += [whole, whole, whole]
    session = requests.Session()
    bodies = [_relay(session, srv.getsockname()[1]) for _ in range(3)]
    assert bodies == [EVENT + EVENT + USAGE] * 3
    assert len(accepted) == 1  # one pooled connection served all three streams


@pytest.mark.parametrize(("tail", "cause"), [
    (b"", "the connection closed before a complete answer"),
    (b"5\r\nhe", "the connection closed before a complete answer"),
    (b"zz\r\n", "the connection closed before a complete answer"),
    (b"RST", "connection reset by peer"),
])
def test_a_stream_broken_off_mid_body_names_the_host_and_the_cause(upstream, tail: bytes, cause: str) -> None:
    srv, script, _ = upstream
    script.append(HEAD + _chunk(EVENT) + tail)
    response = requests.post(f"http://127.0.0.1:{srv.getsockname()[1]}/", stream=True)
    assert read_chunk(response) == EVENT
    with pytest.raises(UpstreamUnreachable) as caught:
        while read_chunk(response):
            pass
    assert caught.value.message == f"Upstream host 127.0.0.1 broke off its answer: {cause}"


@pytest.mark.parametrize("pieces", [
    [EVENT * 3, USAGE],                      # whole events per chunk, usage last
    [EVENT, EVENT, EVENT, USAGE],            # one event per chunk: the content deltas are skipped unsplit
    [EVENT, USAGE[:20], USAGE[20:]],         # the usage event split across chunks
    [EVENT + USAGE[:30], USAGE[30:] + EVENT],  # a chunk ending mid-event, then whole events
    [EVENT.replace(b"\n", b"\r\n"), USAGE.replace(b"\n", b"\r\n")],  # CRLF line ends
])
def test_usage_is_read_however_the_events_fall_into_chunks(pieces: list[bytes]) -> None:
    tap = UsageTap("text/event-stream", None)
    for piece in pieces:
        tap.feed(piece)
    usage = tap.result()
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("m", 3, 5)
