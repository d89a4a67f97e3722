"""Split server-sent events and NDJSON streams into events, cheaply and with a bounded buffer."""

from __future__ import annotations

from collections.abc import Callable

DATA_FIELD = b"data:"


def event_data(event: bytes) -> bytes:
    """Return the data of one SSE event: its ``data:`` field values joined by newlines."""
    values = []
    for line in event.split(b"\n"):
        if line.startswith(DATA_FIELD):
            values.append(line[6:] if line[5:6] == b" " else line[5:])
    return values[0] if len(values) == 1 else b"\n".join(values)


class EventReader:
    """Turn stream bytes into whole events (SSE: up to a blank line; NDJSON: one line) for a callback.

    Work per chunk is a few scans in C: the chunk is appended to the open event, and only complete
    events are cut off and handed over, as raw bytes, to on_event(event, data_of). The callback decides
    from the raw bytes whether the event is worth parsing and calls data_of(event) only then, so content
    deltas cost no per-line Python work. Only the open event is kept; one longer than max_line is
    dropped whole. Line ends may be LF, CRLF or CR, also when split across chunks.
    """

    def __init__(self, on_event: Callable[[bytes, Callable[[bytes], bytes]], None], *, ndjson: bool = False,
                 max_line: int = 1 << 20) -> None:
        self._on_event = on_event
        self._separator = b"\n" if ndjson else b"\n\n"
        self._data_of = _as_is if ndjson else event_data
        self._max_line = max_line
        self._open = bytearray()
        self._skipping = False   # the open event went past max_line: drop bytes up to its end
        self._cr_held = False    # the last chunk ended in CR: it may be the first half of CRLF

    @property
    def held(self) -> int:
        """Return the bytes this reader holds now (for memory checks)."""
        return len(self._open)

    def whole_events(self, chunk: bytes) -> bool:
        """Tell whether chunk is a run of complete events that leaves nothing open (the usual relayed chunk).

        Feeding such a chunk leaves the reader as it found it, so a caller that sees nothing of interest
        in the chunk as a whole may skip feeding it: no event in it would be of interest either.
        """
        return (not self._open and not self._skipping and not self._cr_held
                and chunk.endswith(self._separator) and b"\r" not in chunk)

    def feed(self, chunk: bytes) -> None:
        """Read a chunk, handing every event it completes to the callback."""
        chunk = self._normalise_line_ends(chunk)
        if self._skipping:
            chunk = self._skip_to_next_event(chunk)
            if not chunk:
                return
        opened = len(self._open)
        self._open += chunk
        # A separator may straddle the old and new bytes: search from just before the new ones.
        start = max(opened - len(self._separator) + 1, 0)
        end = self._open.rfind(self._separator, start)
        if end < 0:
            if len(self._open) > self._max_line:
                self._start_skipping()
            return
        complete = bytes(self._open[:end])
        del self._open[:end + len(self._separator)]
        on_event, data_of, limit = self._on_event, self._data_of, self._max_line
        for event in complete.split(self._separator):
            if event and len(event) <= limit:
                on_event(event, data_of)
        if len(self._open) > self._max_line:
            self._start_skipping()

    def close(self) -> None:
        """Hand over the event left open by a stream that ended without its final blank line."""
        if not self._skipping and self._open.strip():
            self._hand_over(bytes(self._open))
        self._open.clear()
        self._skipping = False
        self._cr_held = False

    def _hand_over(self, event: bytes) -> None:
        if len(event) <= self._max_line:
            self._on_event(event, self._data_of)

    def _normalise_line_ends(self, chunk: bytes) -> bytes:
        if self._cr_held:
            chunk = b"\r" + chunk
            self._cr_held = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr_held = True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    def _start_skipping(self) -> None:
        # Keep just enough of the dropped bytes to see a separator that straddles two chunks.
        del self._open[:len(self._open) - (len(self._separator) - 1)]
        self._skipping = True

    def _skip_to_next_event(self, chunk: bytes) -> bytes:
        window = bytes(self._open) + chunk
        found = window.find(self._separator)
        if found < 0:
            self._open[:] = window[len(window) - (len(self._separator) - 1):]
            return b""
        self._open.clear()
        self._skipping = False
        return window[found + len(self._separator):]


def _as_is(event: bytes) -> bytes:
    return event
