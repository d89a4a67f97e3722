"""The framing of an upstream body read straight off its socket: chunked, a known length, or until close.

The poller relay (app/server/relay.py) takes over a body http.client has started to read, so each framing
starts where http.client left off. Only what the body carries comes out of `feed`; `done` says the body
is over, `exact` that it ended on its last byte (the connection can be reused).
"""

from __future__ import annotations

import http.client
import re

_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_LINE = 4096  # a chunk-size or trailer line longer than this is not HTTP/1.1 (http.client allows 64 KiB)


class BadFraming(Exception):
    """The upstream's body does not follow its own framing."""


class Framing:
    """Length-less framing: the body runs until the upstream closes the connection."""

    done = False
    exact = False  # a body that ends with the connection leaves nothing to reuse

    def feed(self, data: bytes) -> bytes:
        """Return the body bytes in data."""
        return data

    def closed(self) -> None:
        """Note the upstream closed the connection; raise BadFraming if the body was not over yet."""
        self.done = True


class Length(Framing):
    """A body of a known length (Content-Length)."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.done = remaining == 0
        self.exact = self.done

    def feed(self, data: bytes) -> bytes:
        """Return the body bytes in data; anything past the length means the connection is not reusable."""
        body = data[:self.remaining]
        self.remaining -= len(body)
        if self.remaining == 0:
            self.done = True
            self.exact = len(body) == len(data)
        return body

    def closed(self) -> None:
        """Note the upstream closed the connection before the declared length."""
        if not self.done:
            raise BadFraming(f"closed with {self.remaining} bytes of the body still to come")


class Chunked(Framing):
    """A chunked body (RFC 9112 section 7.1): size lines, data, and trailers up to a blank line."""

    def __init__(self, chunk_left: int | None = None) -> None:
        # http.client's own state: None before a size line, 0 with the data read but not its CRLF, n mid-data.
        self.left = chunk_left or 0
        self.state = "size" if chunk_left is None else ("data" if chunk_left else "crlf")
        self.line = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Return the chunk data in data; sets `done` at the end of the trailers."""
        out: list[bytes] = []
        at, end = 0, len(data)
        while at < end and not self.done:
            if self.state == "size" and not self.line:
                at = self._whole_chunks(data, at, out)  # the usual case: whole chunks, one event each
                if at >= end or self.done:
                    break
            if self.state == "data":
                piece = data[at:at + self.left]
                out.append(piece)
                at += len(piece)
                self.left -= len(piece)
                if self.left == 0:
                    self.state = "crlf"
                continue
            newline = data.find(b"\n", at)
            if newline < 0:
                self._hold(data[at:])
                break
            self._hold(data[at:newline])
            at = newline + 1
            self._line_ends(bytes(self.line).rstrip(b"\r"))
            self.line.clear()
        self.exact = self.done and at == end
        return b"".join(out)

    def _whole_chunks(self, data: bytes, at: int, out: list[bytes]) -> int:
        """Take the complete chunks from `at` on without the line-by-line state machine; return where it stopped."""
        end = len(data)
        while at < end:
            newline = data.find(b"\n", at, at + 18)
            if newline < 0:
                return at
            size = data[at:newline].rstrip(b"\r")
            if not _HEX_SIZE.fullmatch(size):
                return at  # an extension, or bad: the state machine reads it (and refuses what is bad)
            left = int(size, 16)
            start = newline + 1
            if left == 0 or data[start + left:start + left + 2] != b"\r\n":
                return at  # the last chunk, or one not all here: the state machine goes on from its size line
            out.append(data[start:start + left])
            at = start + left + 2
        return at

    def closed(self) -> None:
        """Note the upstream closed the connection before the last chunk."""
        if not self.done:
            raise BadFraming("closed before the last chunk of its body")

    def _hold(self, part: bytes) -> None:
        self.line += part
        if len(self.line) > MAX_LINE:
            raise BadFraming("sent a chunk-size or trailer line longer than 4 KiB")

    def _line_ends(self, line: bytes) -> None:
        if self.state == "crlf":
            if line:
                raise BadFraming("sent chunk data longer than its declared size")
            self.state = "size"
        elif self.state == "size":
            size = line.split(b";", 1)[0].strip()
            if not _HEX_SIZE.fullmatch(size):  # int(..., 16) would take "0x1f", "+1f" and "1_f" too
                raise BadFraming(f"sent an invalid chunk size {size[:20]!r}")
            self.left = int(size, 16)
            self.state = "data" if self.left else "trailer"
        elif not line:  # the blank line after the trailers
            self.done = True


def framing_of(response: http.client.HTTPResponse) -> Framing:
    """Return the framing of the rest of a body http.client has started reading."""
    if response.chunked:
        return Chunked(response.chunk_left)
    if response.length is not None:
        return Length(response.length)
    return Framing()
