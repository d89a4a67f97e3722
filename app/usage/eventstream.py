"""Read AWS ``application/vnd.amazon.eventstream`` frames (Bedrock ConverseStream, InvokeModel streams).

A frame is: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes, headers, payload,
CRC32 of everything before it. A header is name length (u8), name, value type (u8), value; only string
values (type 7: u16 BE length + UTF-8) matter here, the others are skipped by their fixed or given size.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

PRELUDE = 12
OVERHEAD = 16
STRING_TYPE = 7
# Value sizes of the fixed-size header types: bool true/false, byte, short, int, long, timestamp, uuid.
_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_U32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">III")
_U16 = struct.Struct(">H")


def parse_headers(raw: bytes) -> dict[str, str]:
    """Return the string-valued headers of a frame; raise ValueError on a malformed header block."""
    headers: dict[str, str] = {}
    pos, end = 0, len(raw)
    while pos < end:
        name_len = raw[pos]
        name = raw[pos + 1:pos + 1 + name_len].decode("utf-8", "replace")
        pos += 1 + name_len
        if pos >= end:
            raise ValueError("header without a value type")
        kind = raw[pos]
        pos += 1
        if kind in (6, STRING_TYPE):
            if pos + 2 > end:
                raise ValueError("header value length cut off")
            (size,) = _U16.unpack_from(raw, pos)
            pos += 2
            if kind == STRING_TYPE:
                headers[name] = raw[pos:pos + size].decode("utf-8", "replace")
        elif kind in _FIXED_SIZES:
            size = _FIXED_SIZES[kind]
        else:
            raise ValueError(f"unknown header value type {kind}")
        pos += size
        if pos > end:
            raise ValueError("header value cut off")
    return headers


class EventStreamReader:
    """Split eventstream bytes into frames, checking both CRCs, and hand (raw headers, payload) to a callback.

    Headers are handed over unparsed: most frames are content deltas the callback skips by a look at
    the payload, and parse_headers costs Python work per header.

    A frame larger than max_frame is skipped without being held. A CRC or framing error stops the
    reader for good: past it, frame boundaries can no longer be trusted.
    """

    def __init__(self, on_frame: Callable[[bytes, bytes], None], *, max_frame: int = 1 << 20) -> None:
        self._on_frame = on_frame
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._skip = 0
        self.broken = False

    @property
    def held(self) -> int:
        """Return the bytes this reader holds now (for memory checks)."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> None:
        """Read a chunk, handing every frame it completes to the callback."""
        if self.broken:
            return
        if self._skip:
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            chunk = chunk[skipped:]
            if not chunk:
                return
        self._buffer += chunk
        while len(self._buffer) >= PRELUDE and not self.broken:
            if not self._next_frame():
                return

    def close(self) -> None:
        """Forget a frame left incomplete by a stream that was cut."""
        self._buffer.clear()

    def _next_frame(self) -> bool:
        buffer = self._buffer
        total, headers_len, prelude_crc = _PRELUDE.unpack_from(buffer, 0)
        if zlib.crc32(buffer[:8]) != prelude_crc or total < OVERHEAD or headers_len > total - OVERHEAD:
            self._break()
            return False
        if total > self._max_frame:
            if len(buffer) >= total:
                del buffer[:total]
                return True
            self._skip = total - len(buffer)
            buffer.clear()
            return False
        if len(buffer) < total:
            return False
        frame = bytes(buffer[:total])
        del buffer[:total]
        if zlib.crc32(frame[:-4]) != _U32.unpack_from(frame, total - 4)[0]:
            self._break()
            return False
        self._on_frame(frame[PRELUDE:PRELUDE + headers_len], frame[PRELUDE + headers_len:total - 4])
        return True

    def _break(self) -> None:
        self.broken = True
        self._buffer.clear()
