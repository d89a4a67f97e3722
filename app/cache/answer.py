"""The stored form of an upstream answer: status, the few headers replayed, and the body."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from app.jsonwire import compact_bytes

# Only these headers are replayed on a hit; the rest (dates, request ids, rate-limit counters) belong
# to the original call and would mislead the client if repeated.
REPLAYED_HEADERS = frozenset({"content-type", "content-encoding"})

# Rough per-entry cost of the Python objects and cache bookkeeping around the payload, so that many
# tiny entries cannot slip far past the byte bound.
ENTRY_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One cached upstream answer; immutable, so hits hand it out without copying."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def from_response(cls, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> CachedAnswer:
        """Build an answer that keeps only the replayed headers, names lower-cased."""
        kept = tuple((name.lower(), value) for name, value in headers if name.lower() in REPLAYED_HEADERS)
        return cls(status, kept, bytes(body))

    @property
    def size(self) -> int:
        """Return the bytes this answer costs in a cache: body, headers and a fixed overhead."""
        header_bytes = sum(len(name) + len(value) for name, value in self.headers)
        return len(self.body) + header_bytes + ENTRY_OVERHEAD_BYTES


_FORMAT_VERSION = 1  # the stored form of an answer (Redis and the host-wide file)


def encode_answer(answer: CachedAnswer) -> bytes:
    """Serialise an answer as one compact JSON header line followed by the raw body bytes."""
    head = {"v": _FORMAT_VERSION, "s": answer.status, "h": answer.headers}
    return compact_bytes(head) + b"\n" + answer.body


def decode_answer(blob: bytes) -> CachedAnswer:
    """Parse what encode_answer wrote; raise ValueError on anything else."""
    # json.dumps escapes newlines inside strings, so the first b"\n" always ends the header.
    head_bytes, newline, body = blob.partition(b"\n")
    if not newline:
        raise ValueError("no header line")
    head = json.loads(head_bytes)
    if not isinstance(head, dict) or head.get("v") != _FORMAT_VERSION:
        raise ValueError("unknown entry format")
    headers = tuple((str(name), str(value)) for name, value in head["h"])
    return CachedAnswer(int(head["s"]), headers, body)
