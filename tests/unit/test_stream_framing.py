"""The framings the poller relay reads an upstream body with (app/server/framing.py)."""

from __future__ import annotations

import pytest

from app.server.framing import BadFraming, Chunked, Framing, Length

BODY = b"data: one\n\n" * 3 + b"data: [DONE]\n\n"
WIRE = b"b\r\ndata: one\n\n\r\n16;ext=1\r\ndata: one\n\ndata: one\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\nx-t: 1\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 5, 17, len(WIRE)])
def test_a_chunked_body_reads_the_same_however_it_is_split(step: int) -> None:
    framing, out = Chunked(), b""
    for at in range(0, len(WIRE), step):
        assert not framing.done
        out += framing.feed(WIRE[at:at + step])
    assert (out, framing.done, framing.exact) == (BODY, True, True)


def test_bytes_after_the_last_chunk_leave_the_connection_unusable() -> None:
    framing = Chunked()
    assert framing.feed(WIRE + b"HTTP/1.1 200 OK") == BODY
    assert framing.done and not framing.exact


def test_a_body_http_client_started_goes_on_where_it_stopped() -> None:
    assert Chunked(chunk_left=3).feed(b"abc\r\n2\r\nde\r\n0\r\n\r\n") == b"abcde"  # mid-data
    assert Chunked(chunk_left=0).feed(b"\r\n2\r\nde\r\n0\r\n\r\n") == b"de"  # data read, CRLF not yet


@pytest.mark.parametrize("wire", [b"0x2\r\nab\r\n", b"+2\r\nab\r\n", b"1_0\r\n", b"zz\r\n", b"2\r\nabc\r\n",
                                  b"1" * 5000])
def test_a_malformed_chunked_body_is_refused(wire: bytes) -> None:
    with pytest.raises(BadFraming):
        Chunked().feed(wire)


def test_a_close_before_the_end_is_a_break() -> None:
    framing = Chunked()
    framing.feed(b"5\r\nab")
    with pytest.raises(BadFraming):
        framing.closed()
    length = Length(10)
    assert length.feed(b"abc") == b"abc"
    with pytest.raises(BadFraming):
        length.closed()


def test_a_known_length_ends_on_its_last_byte() -> None:
    framing = Length(5)
    assert framing.feed(b"abc") == b"abc" and not framing.done
    assert framing.feed(b"de") == b"de" and framing.done and framing.exact
    over = Length(2)
    assert over.feed(b"abc") == b"ab" and over.done and not over.exact


def test_a_body_until_close_ends_with_the_connection() -> None:
    framing = Framing()
    assert framing.feed(b"abc") == b"abc" and not framing.done
    framing.closed()
    assert framing.done and not framing.exact
