"""Collect a JSON answer within a byte limit and read its usage; past the limit, scan a bounded tail.

An answer up to the limit is parsed whole when it ends. A larger one (embeddings of a big batch, images
as base64) is not kept: only its first HEAD bytes and last TAIL bytes are, and the usage object is
found in the tail by its key. That is sound because in valid JSON the bytes ``"usage":`` can only be an
object key (a quote inside a string is always escaped), and every supported provider writes its usage
block near the end of the answer. Images sent as base64 are counted by their ``"b64_json":`` keys as
the bytes pass.
"""

from __future__ import annotations

import json
import re

from app.usage.extract import UsageAccumulator

HEAD = 16 * 1024
TAIL = 64 * 1024
_B64_KEY = b'"b64_json":'
_USAGE_KEY = re.compile(rb'"(usage|usageMetadata|meta|x_groq|amazon-bedrock-invocationMetrics)"\s*:\s*(?=[{])')
_MODEL_KEY = re.compile(rb'"(?:model|modelVersion)"\s*:\s*"([^"\\]{1,256})"')
_DECODER = json.JSONDecoder()


def scan_for_usage(head: bytes, tail: bytes, acc: UsageAccumulator) -> None:
    """Read the last usage block of each kind found in tail, and a model named in head or tail."""
    last: dict[bytes, int] = {}
    for match in _USAGE_KEY.finditer(tail):
        last[match.group(1)] = match.end()
    for key, start in sorted(last.items(), key=lambda item: item[1]):
        try:
            value, _ = _DECODER.raw_decode(tail[start:].decode("utf-8", "replace"))
        except ValueError:
            continue
        acc.absorb({key.decode(): value})
    if acc.model is None:
        found = _MODEL_KEY.search(head)
        if found is None:
            tail_models = _MODEL_KEY.findall(tail)
            model = tail_models[-1] if tail_models else None
        else:
            model = found.group(1)
        if model:
            acc.model = model.decode("utf-8", "replace")


class JsonBody:
    """Hold a JSON answer up to limit bytes, then only a head, a tail and a count of base64 images."""

    def __init__(self, acc: UsageAccumulator, limit: int) -> None:
        self._acc = acc
        self._limit = limit
        self._buffer = bytearray()
        self._over = False
        self._head = b""
        self._tail = bytearray()
        self._carry = b""
        self._b64_images = 0

    @property
    def held(self) -> int:
        """Return the bytes this collector holds now (for memory checks)."""
        return len(self._buffer) + len(self._head) + len(self._tail) + len(self._carry)

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the answer."""
        if not self._over:
            if len(self._buffer) + len(chunk) <= self._limit:
                self._buffer += chunk
                return
            self._go_over()
        self._count_images(chunk)
        self._tail += chunk
        if len(self._tail) > 2 * TAIL:
            del self._tail[:-TAIL]

    def close(self) -> None:
        """Read usage from what was received: the whole answer, or its head and tail."""
        if not self._over:
            body = bytes(self._buffer)
            try:
                parsed = json.loads(body)
            except ValueError:
                # Cut short or not JSON after all: the usage block may still have arrived.
                scan_for_usage(body[:HEAD], body[-TAIL:], self._acc)
                return
            self._acc.absorb(parsed)
            return
        scan_for_usage(self._head, bytes(self._tail[-TAIL:]), self._acc)
        if self._b64_images:
            self._acc.images = self._b64_images

    def _go_over(self) -> None:
        self._over = True
        buffered = bytes(self._buffer)
        self._buffer = bytearray()
        self._head = buffered[:HEAD]
        self._count_images(buffered)
        self._tail = bytearray(buffered[-TAIL:])

    def _count_images(self, chunk: bytes) -> None:
        # The key may straddle two pieces: look at the end of the last one too. The carry is shorter
        # than the key, so no key is counted twice.
        window = self._carry + chunk if self._carry else chunk
        self._b64_images += window.count(_B64_KEY)
        self._carry = window[-(len(_B64_KEY) - 1):]
