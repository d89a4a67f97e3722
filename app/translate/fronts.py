"""The client's side of a translated call: the unified chat and embeddings formats (OpenAI's)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Protocol

from app.translate.base import CallFacts
from app.translate.sse import data_event


class StreamWriter(Protocol):
    """Writes unified chunks in the client's stream format."""

    def write(self, chunks: list[dict[str, Any]]) -> bytes:
        """Return the bytes of these chunks."""
        ...

    def error(self, error: dict[str, Any]) -> bytes:
        """Return the event that tells the client the stream failed (nothing follows it)."""
        ...

    def end(self) -> bytes:
        """Return what closes a stream that ended well."""
        ...


class Front(Protocol):
    """The client's format: how its request becomes a unified one, and the unified answer becomes its own."""

    endpoint: str  # the unified endpoint the adapter translates (chatComplete, embed)

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the unified request for the client's body."""
        ...

    def response(self, unified: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
        """Return the client's answer for a unified one."""
        ...

    def stream(self, facts: CallFacts) -> StreamWriter:
        """Return the writer of one streamed answer."""
        ...

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """Return the client's error body for a unified error body."""
        ...


class OpenAIStream:
    """Unified chunks as OpenAI's stream: one `data:` event each, `[DONE]` at the end."""

    def write(self, chunks: list[dict[str, Any]]) -> bytes:
        """Return one data event per chunk."""
        return b"".join(data_event(chunk) for chunk in chunks)

    def error(self, error: dict[str, Any]) -> bytes:
        """Return a data event carrying the error, as OpenAI sends one mid-stream."""
        return data_event({"error": error})

    def end(self) -> bytes:
        """Return the `[DONE]` event."""
        return b"data: [DONE]\n\n"


class OpenAIFront:
    """The OpenAI format of /v1/chat/completions and /v1/embeddings: the unified one, as it is."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.base64 = False  # embeddings asked for as base64 (the openai SDK's default)

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the body unchanged (noting whether embeddings are wanted as base64)."""
        self.base64 = body.get("encoding_format") == "base64"
        return body

    def response(self, unified: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
        """Return the answer unchanged, but for float embeddings asked for as base64: encoded the way OpenAI does."""
        data = unified.get("data") if self.base64 else None
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and isinstance(item.get("embedding"), list):
                vector = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return unified

    def stream(self, facts: CallFacts) -> StreamWriter:
        """Return an OpenAI stream writer."""
        return OpenAIStream()

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """Return the unified error unchanged."""
        return error


def dumps(payload: Any) -> bytes:
    """Return compact JSON bytes."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
