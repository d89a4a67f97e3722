"""Undo a gzip or deflate Content-Encoding incrementally, in bounded steps, for reading only."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

STEP = 64 * 1024
_AUTO = zlib.MAX_WBITS | 32   # zlib or gzip header, detected
_RAW = -zlib.MAX_WBITS        # headerless deflate, which some servers send as "deflate"


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

    Stops (yields nothing more) once max_output bytes came out, so that a compression bomb costs a
    bounded amount of work; the client still receives every byte, only usage reading gives up.
    """

    def __init__(self, encoding: str, max_output: int) -> None:
        self._raw_fallback = encoding == "deflate"
        self._decoder = zlib.decompressobj(_AUTO)
        self._started = False
        self._max_output = max_output
        self.output = 0
        self.exhausted = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the inflated pieces of data; raise zlib.error on corrupt input."""
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
            data = self._decoder.unconsumed_tail
            if self._decoder.eof and self._decoder.unused_data:
                # Concatenated gzip members: go on with the next one.
                data = self._decoder.unused_data + data
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
        if self.output > self._max_output:
            self.exhausted = True
        return piece
