"""The client's side of a translated call: the unified chat and embeddings formats (OpenAI's)."""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any, Protocol

from app.errors import BadRequest
from app.jsonwire import compact, compact_bytes
from app.translate.base import CallFacts
from app.translate.sse import data_event
from app.usage.report import UsageReport

_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StreamWriter(Protocol):
    """Writes unified chunks in the client's stream format, and reports the usage its events tell the client."""

    report: UsageReport  # fed each event object that carries usage or a model, as it is written

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

    def __init__(self) -> None:
        self.report = UsageReport()

    def write(self, chunks: list[dict[str, Any]]) -> bytes:
        """Return one data event per chunk."""
        for chunk in chunks:
            self.report.event(chunk)
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
    """Return compact JSON bytes; a lone surrogate (an upstream may send one) goes as its `\\u` escape."""
    text = compact(payload, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # not Unicode, so no UTF-8 either: the escaped form is the only faithful one
        return compact_bytes(payload)


def refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """Refuse a body holding a lone surrogate (`"\\ud800"`), naming where: it is not Unicode, so it has no UTF-8
    to send, and OpenAI itself answers it with a 400 (docs/security.md)."""
    if not _holds_lone_surrogate(body):
        return
    where = lone_surrogate_at(body)
    raise BadRequest(f"Invalid request body: {where} holds a lone surrogate, which is not valid Unicode",
                     errors=[f"{where}: a lone surrogate (\\ud800-\\udfff without its pair) is not valid Unicode"])


def _holds_lone_surrogate(value: Any) -> bool:
    """Return whether any string or key in value holds a lone surrogate (the fast walk: no paths kept)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            # isascii is O(1) in CPython, so the usual ASCII text (and base64) costs no scan.
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            if any(not key.isascii() and _SURROGATE.search(key) for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def lone_surrogate_at(value: Any) -> str | None:
    """Return the JSON path (`messages[0].content`) of the first string or key with a lone surrogate, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path or "the body"
        elif isinstance(item, dict):
            if any(_SURROGATE.search(key) for key in item):
                return f"a key of {path or 'the body'}"
            stack.extend((_member(path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return None


def _member(path: str, key: str) -> str:
    """Return the path of an object member: `.name` for plain names, `["odd key"]` otherwise."""
    if _PLAIN_NAME.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"
