"""UsageTap: read usage from copies of the chunks the relay sends, without touching or delaying them."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import Protocol

from app.usage.eventstream import EventStreamReader, parse_headers
from app.usage.extract import UsageAccumulator
from app.usage.inflate import Inflater, UnsupportedEncoding, encoding_of
from app.usage.jsonbody import JsonBody
from app.usage.lines import EventReader
from app.usage.model import Usage

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
MAX_EVENT_BYTES = 1 << 20
# Inflating stops past this many bytes: a compression bomb must not cost unbounded CPU.
MAX_INFLATED_BYTES = 256 << 20
# Enough leading bytes to tell an SSE field ("event:", "retry:") from anything else.
_SNIFF_BYTES = 6

# A streamed event is parsed only when its bytes mention one of these (or a model, until one is known):
# most events are content deltas, and a substring test is far cheaper than a JSON parse. OpenAI sends
# "usage":null in every chunk when include_usage is on; those mentions do not count.
_USAGE = b"usage"
_NULL_USAGE = (b'"usage":null', b'"usage": null')
_BILLED = b"billed_units"             # Cohere
_EVAL_COUNT = b"eval_count"           # Ollama
_INVOCATION_METRICS = b"invocationMetrics"  # Bedrock InvokeModel streams
_MODEL_HINT = b'"model'
_DONE = b"[DONE]"
_CHUNK_PAYLOAD = b'{"bytes"'
# Newline-delimited JSON: Ollama's native API, Cohere v1 chat streams (application/stream+json).
_NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
                           "application/jsonlines", "application/stream+json"})
_BOM = b"\xef\xbb\xbf"


class _Reader(Protocol):
    @property
    def held(self) -> int: ...

    def feed(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class UsageTap:
    """Watch the bytes of one answer and report the usage it carried.

    feed() takes each chunk as it is relayed; result() is called once the body ended or was cut.
    Neither raises: a tap that meets something it cannot read stops reading and reports what it had.
    The format is recognised from the body (JSON, server-sent events, NDJSON, AWS eventstream) and the
    keys in it, never from the provider, so proxied traffic of any provider is read the same way.
    """

    def __init__(self, content_type: str | None, content_encoding: str | None, request_model: str | None = None,
                 *, max_json_bytes: int = MAX_JSON_BYTES, max_event_bytes: int = MAX_EVENT_BYTES,
                 max_inflated_bytes: int = MAX_INFLATED_BYTES) -> None:
        self._request_model = request_model
        self._acc = UsageAccumulator()
        self._max_json_bytes = max_json_bytes
        self._max_event_bytes = max_event_bytes
        self._reader: _Reader | None = None
        self._lines: EventReader | None = None  # the reader, when it splits SSE or NDJSON events
        self._sniffing = False
        self._sniffed = b""
        self._inflater: Inflater | None = None
        self._done = False
        self._result: Usage | None = None
        try:
            encoding = encoding_of(content_encoding)
        except UnsupportedEncoding:
            self._done = True
            return
        if encoding is not None:
            self._inflater = Inflater(encoding, max_inflated_bytes)
        self._choose_reader(_media_type(content_type))

    @property
    def active(self) -> bool:
        """Return True while the tap still reads what it is fed."""
        return not self._done

    @property
    def held_bytes(self) -> int:
        """Return the bytes of the answer the tap holds now (bounded whatever the answer's size)."""
        return (self._reader.held if self._reader is not None else 0) + len(self._sniffed)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Read a copy of the next chunk of the answer; never raises, never changes the chunk."""
        if self._done or not chunk:
            return
        self._result = None
        try:
            if self._inflater is None:
                data = bytes(chunk)
                lines = self._lines
                if lines is not None and lines.whole_events(data) and not self._wanted(data):
                    # The usual relayed chunk: whole content deltas, none mentioning usage. Nothing to split.
                    return
                self._route(data)
                return
            for piece in self._inflater.feed(bytes(chunk)):
                self._route(piece)
            if self._inflater.exhausted:
                self._stop()
        except Exception:  # noqa: BLE001 - a tap must never break the relay it watches
            log.debug("usage tap stopped reading", exc_info=True)
            self._stop()

    def result(self) -> Usage:
        """Return the usage found so far (after the body ended or was cut); never raises."""
        if self._result is None:
            try:
                self._finish()
                self._result = self._acc.to_usage(self._request_model)
            except Exception:  # noqa: BLE001 - same reason as in feed
                log.debug("usage tap could not finish", exc_info=True)
                self._result = Usage(model=self._acc.model or self._request_model or None)
        return self._result

    def _choose_reader(self, media_type: str) -> None:
        if media_type == "text/event-stream":
            self._reader = self._lines = EventReader(self._on_event, max_line=self._max_event_bytes)
        elif media_type == "application/vnd.amazon.eventstream":
            self._reader = EventStreamReader(self._on_frame, max_frame=self._max_event_bytes)
        elif media_type in _NDJSON_TYPES:
            self._reader = self._lines = EventReader(self._on_event, ndjson=True, max_line=self._max_event_bytes)
        elif (not media_type or media_type == "application/json" or media_type.endswith("+json")
              or media_type == "text/plain"):
            # JSON, or a mislabelled stream: the first bytes tell which.
            self._sniffing = True
        else:
            # Audio, images, files, HTML: nothing to read, and nothing worth spending time on.
            self._done = True

    def _route(self, data: bytes) -> None:
        if self._sniffing:
            data = self._sniff(data)
            if not data:
                return
        if self._reader is not None:
            self._reader.feed(data)

    def _sniff(self, data: bytes) -> bytes:
        """Pick the reader from the first non-blank bytes; return the bytes it should read."""
        if not self._sniffed:
            data = data.lstrip()
            if data.startswith(_BOM):
                data = data[len(_BOM):].lstrip()
        data = self._sniffed + data
        if not data:
            return b""
        if data[:1] not in (b"{", b"[", b":") and len(data) < _SNIFF_BYTES:
            # Too few bytes to tell "data:" from anything else; a later chunk (or the end) will say.
            self._sniffed = data
            return b""
        return self._decide(data)

    def _decide(self, data: bytes) -> bytes:
        self._sniffing = False
        self._sniffed = b""
        if data[:1] in (b"{", b"["):
            self._reader = JsonBody(self._acc, self._max_json_bytes)
        elif data.startswith((b"data:", b"event:", b"id:", b":", b"retry:")):
            self._reader = self._lines = EventReader(self._on_event, max_line=self._max_event_bytes)
        else:
            self._stop()
            return b""
        return data

    def _on_event(self, event: bytes, data_of: Callable[[bytes], bytes]) -> None:
        if self._wanted(event):
            self._absorb_json(data_of(event))

    def _absorb_json(self, payload: bytes) -> None:
        if not payload or payload == _DONE:
            return
        try:
            parsed = json.loads(payload)
        except ValueError:
            return
        self._acc.absorb(parsed)

    def _wanted(self, payload: bytes) -> bool:
        mentions = payload.count(_USAGE)
        if mentions and mentions > payload.count(_NULL_USAGE[0]) + payload.count(_NULL_USAGE[1]):
            return True
        if _BILLED in payload or _EVAL_COUNT in payload or _INVOCATION_METRICS in payload:
            return True
        return self._acc.model is None and _MODEL_HINT in payload

    def _on_frame(self, raw_headers: bytes, payload: bytes) -> None:
        chunk = payload.startswith(_CHUNK_PAYLOAD)
        if not chunk and not self._wanted(payload):
            return
        try:
            headers = parse_headers(raw_headers)
        except (ValueError, IndexError):
            return
        if headers.get(":message-type", "event") != "event":
            return
        if chunk and headers.get(":event-type") == "chunk":
            # InvokeModelWithResponseStream: the model's own event, base64 inside {"bytes": ...}.
            try:
                inner = base64.b64decode(json.loads(payload)["bytes"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                return
            if self._wanted(inner):
                self._absorb_json(inner)
        elif self._wanted(payload):
            # ConverseStream: the metadata event's payload is {"usage": {...}, "metrics": {...}}.
            self._absorb_json(payload)

    def _finish(self) -> None:
        if not self._done:
            if self._inflater is not None:
                tail = self._inflater.flush()
                if tail:
                    self._route(tail)
            if self._sniffing and self._sniffed:
                self._route_decided(self._decide(self._sniffed))
        self._done = True
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def _route_decided(self, data: bytes) -> None:
        if data and self._reader is not None:
            self._reader.feed(data)

    def _stop(self) -> None:
        self._done = True
