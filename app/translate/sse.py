"""Server-sent events read incrementally: bytes in as they arrive, whole events out."""

from __future__ import annotations

import json
from typing import Any

from app.jsonwire import compact_bytes

_MAX_PENDING = 8 << 20  # an event larger than this is not a real provider's: stop holding it


class SSEReader:
    """Splits an event stream into (event name, data text) pairs; tolerates CRLF and split reads."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        """Return the events these bytes complete."""
        buffer = self.pending + data if self.pending else data
        held_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                buffer, held_cr = buffer[:-1], b"\r"  # maybe half of a CRLF: wait for the next read
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.pending = buffer + held_cr
            if len(self.pending) > _MAX_PENDING:
                raise ValueError("a streamed event is larger than 8 MiB")
            return []
        self.pending = buffer[end + 2:] + held_cr
        return [event for block in buffer[:end].split(b"\n\n") if (event := _parse(block)) is not None]

    def finish(self) -> list[tuple[str, str]]:
        """Return an event the stream ended without a blank line after."""
        block, self.pending = self.pending.strip(b"\r\n"), b""
        event = _parse(block) if block else None
        return [event] if event is not None else []


def _parse(block: bytes) -> tuple[str, str] | None:
    name = ""
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue  # a comment (keep-alive ping)
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if not data and not name:
        return None
    return name, "\n".join(data)


def json_data(text: str) -> Any:
    """Return an event's data parsed as JSON, or None when it is not JSON (a `[DONE]`, say)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def data_event(payload: Any) -> bytes:
    """Return one data-only event (the OpenAI stream's shape)."""
    return b"data: " + compact_bytes(payload, ensure_ascii=False) + b"\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """Return one named event (the Anthropic stream's shape)."""
    return f"event: {name}\n".encode() + data_event(payload)
