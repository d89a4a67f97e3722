"""Undo a gzip or deflate Content-Encoding incrementally, in bounded steps and within a bounded ratio."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

STEP = 64 * 1024
_AUTO = zlib.MAX_WBITS | 32   # zlib or gzip header, detected
_RAW = -zlib.MAX_WBITS        # headerless deflate, which some servers send as "deflate"
# Real JSON and event streams shrink 3 to 20 times; a compression bomb shrinks about 1000 times. Past
# this ratio (and past each caller's own cap) inflating stops, so decompression can never multiply the
# gateway's work per received byte by more than this (docs/security.md).
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20         # a small body may always inflate to this much


class UnsupportedEncoding(ValueError):
    """The Content-Encoding is one this reader cannot undo (br, zstd, stacked encodings)."""


def encoding_of(content_encoding: str | None) -> str | None:
    """Return "gzip" or "deflate" for an encoding to undo, None for none; raise UnsupportedEncoding otherwise."""
    codings = [token.strip().lower() for token in (content_encoding or "").split(",")]
    codings = [token for token in codings if token and token != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise UnsupportedEncoding(content_encoding)


class Inflater:
    """Inflate a compressed body piece by piece, never producing more than STEP bytes at once.

    Stops (yields nothing more, `exhausted` set) once the output passes `allowed`: max_output, or
    MAX_RATIO times the input so far when that is less, so that a compression bomb costs a bounded
    amount of work. What stopping means is the caller's: usage reading gives up, a decoded body is refused.
    """

    def __init__(self, encoding: str, max_output: int) -> None:
        self._raw_fallback = encoding == "deflate"
        self._decoder = zlib.decompressobj(_AUTO)
        self._started = False
        self._max_output = max_output
        self.input = 0
        self.output = 0
        self.exhausted = False

    @property
    def allowed(self) -> int:
        """Return the most output the input so far may inflate to."""
        return min(self._max_output, max(RATIO_FLOOR, MAX_RATIO * self.input))

    @property
    def complete(self) -> bool:
        """Return True when the compressed data ended properly (not cut short)."""
        return self._decoder.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the inflated pieces of data; raise zlib.error on corrupt input."""
        self.input += len(data)
        if not self._started and self._raw_fallback:
            self._started = True
            probe = zlib.decompressobj(_AUTO)
            try:
                probe.decompress(data[:2])
            except zlib.error:
                self._decoder = zlib.decompressobj(_RAW)
        self._started = True
        while data and not self.exhausted:
            piece = self._decoder.decompress(data, STEP)
            if not self._decoder.eof:
                data = self._decoder.unconsumed_tail
            else:
                # Concatenated gzip members: go on with the next one. Everything after the end of a member is
                # in unused_data (unconsumed_tail may hold a copy of it too: taking both read it twice).
                data = self._decoder.unused_data
                if data:
                    self._decoder = zlib.decompressobj(_AUTO)
            if piece:
                yield self._count(piece)

    def flush(self) -> bytes:
        """Return what the decoder still holds at the end of the body."""
        if self.exhausted:
            return b""
        return self._count(self._decoder.flush())

    def _count(self, piece: bytes) -> bytes:
        self.output += len(piece)
        if self.output > self.allowed:
            self.exhausted = True
        return piece


class InflatedTooLarge(ValueError):
    """A compressed body inflates past what the gateway reads of it."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"decompresses beyond {limit} bytes")
        self.limit = limit


def inflate(data: bytes, encoding: str, max_output: int) -> bytes:
    """Return a whole body inflated; raise InflatedTooLarge past its bound, zlib.error when corrupt or cut short."""
    if not data:
        return b""
    inflater = Inflater(encoding, max_output)
    pieces = []
    for piece in inflater.feed(data):
        if inflater.exhausted:
            raise InflatedTooLarge(inflater.allowed)  # the piece past the bound is never kept
        pieces.append(piece)
    pieces.append(inflater.flush())
    if inflater.exhausted:
        raise InflatedTooLarge(inflater.allowed)
    if not inflater.complete:
        raise zlib.error("incomplete or truncated stream")
    return b"".join(pieces)
