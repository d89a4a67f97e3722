"""How a relayed answer's end is recorded: read to the end, left by the client, or broken off upstream."""

from __future__ import annotations

from typing import Any

import pytest

from app.call.answer import Answer, Relay, StreamAborted
from app.call.context import RequestContext
from app.observe import CallObserver
from app.usage import PricingTable


class Records:
    """A request log that keeps what it is given."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, rec: Any) -> None:
        self.rows.append(rec)


class Upstream:
    """An upstream body read piece by piece; `broken` makes the read after the last piece fail."""

    def __init__(self, pieces: list[bytes], broken: bool = False) -> None:
        self.pieces = list(pieces)
        self.broken = broken
        self.closed = False

    def read1(self, size: int, decode_content: bool = False) -> bytes:
        if self.pieces:
            return self.pieces.pop(0)
        if self.broken:
            raise OSError("connection reset by peer")
        return b""

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class UpstreamResponse:
    url = "http://127.0.0.1:9/v1/chat/completions"

    def __init__(self, raw: Upstream) -> None:
        self.raw = raw


def relay(pieces: list[bytes], broken: bool = False) -> tuple[Relay, RequestContext, Records]:
    log = Records()
    observer = CallObserver(PricingTable.default(), log, None, access_lines=False)  # type: ignore[arg-type]
    ctx = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={}, route="unified",
                         trace_id="t")
    observer.started(ctx)
    ctx.upstream_status = 200
    answer = Answer(200, "OK", [("Content-Type", "text/event-stream")], pieces[0],
                    UpstreamResponse(Upstream(pieces[1:], broken)))  # type: ignore[arg-type]
    return Relay(answer, ctx, on_close=observer.finished(ctx, 200)), ctx, log


EVENTS = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]


def recorded(log: Records) -> list[tuple[int, int | None, str | None]]:
    return [(row.status, row.upstream_status, row.error) for row in log.rows]


def test_a_stream_the_client_leaves_is_recorded_as_499_client_closed() -> None:
    body, _, log = relay(EVENTS)
    next(body)
    next(body)
    body.close()  # gunicorn's write failed: the client went away with [DONE] still to come
    assert recorded(log) == [(499, 200, "client closed")]


def test_a_stream_read_to_the_end_keeps_its_status() -> None:
    body, _, log = relay(EVENTS)
    assert b"".join(body) == b"".join(EVENTS)
    body.close()
    assert recorded(log) == [(200, 200, None)]


def test_a_stream_the_upstream_broke_off_is_not_blamed_on_the_client() -> None:
    body, _, log = relay(EVENTS[:2], broken=True)
    next(body)
    next(body)
    with pytest.raises(StreamAborted):
        next(body)
    body.close()
    [(status, upstream_status, error)] = recorded(log)
    assert (status, upstream_status) == (200, 200)
    assert error is not None and "broke off" in error


def test_an_answer_whose_body_is_never_asked_for_is_not_a_client_that_left() -> None:
    body, _, log = relay(EVENTS)
    body.close()  # HEAD, 204 and 304 answers: the server closes the body without reading it
    assert recorded(log) == [(200, 200, None)]
