"""`[upstream] connect_timeout_ms` and `read_timeout_ms` end a call near their setting (docs/gateway-file.md).

Each test sets the other timeout to 3 s, so a swapped or ignored setting shows as a call taking 3 s or more.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from tests.conftest import GATEWAY_KEY

OTHER_S = 3.0  # the timeout that must not be the one that fires
SETTING_S = 0.5


def rerank(app: Flask, port: int) -> tuple[int, str, float]:
    """Call the proxy path on a custom host at 127.0.0.1:port; return status, message and seconds taken."""
    started = time.monotonic()
    res = app.test_client().post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere", "Authorization": "Bearer x",
        "x-portkey-custom-host": f"http://127.0.0.1:{port}/v1"})
    return res.status_code, res.get_json()["message"], time.monotonic() - started


@pytest.fixture
def silent() -> Iterator[int]:
    """A listener that never accepts: the kernel completes the handshake and takes the request, no one answers.

    It is closed (resetting its connections) after 5 s, so a timeout that does not fire fails instead of hanging.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    timer = threading.Timer(5.0, listener.close)
    timer.start()
    yield listener.getsockname()[1]
    timer.cancel()
    listener.close()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect just waits."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    try:
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break  # the next connect waits: the queue is full
            held.append(probe)
        else:
            pytest.skip("this kernel answers connects past the listen backlog; a connect cannot be made to wait")
        yield port
    finally:
        for probe in held:
            probe.close()
        listener.close()


def test_read_timeout_ends_a_call_whose_upstream_never_answers(app_factory: Callable[..., Flask],
                                                                silent: int) -> None:
    app = app_factory(read_timeout_s=SETTING_S, connect_timeout_s=OTHER_S)
    status, message, took = rerank(app, silent)
    assert (status, message) == (502, "Could not get an answer from upstream host 127.0.0.1: timed out")
    assert SETTING_S - 0.05 <= took < SETTING_S + 2.0, took


def test_connect_timeout_ends_a_connect_that_is_never_answered(app_factory: Callable[..., Flask],
                                                                full_backlog: int) -> None:
    app = app_factory(connect_timeout_s=SETTING_S, read_timeout_s=OTHER_S)
    status, message, took = rerank(app, full_backlog)
    assert status == 502 and "127.0.0.1" in message and "timed out" in message, message
    assert SETTING_S - 0.05 <= took < SETTING_S + 2.0, took
