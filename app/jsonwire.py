"""Compact JSON, as the gateway writes it on the wire, in cache keys and in log records: no spaces."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any


def compact(value: Any, *, ensure_ascii: bool = True, sort_keys: bool = False,
            default: Callable[[Any], Any] | None = None) -> str:
    """Return `value` as JSON text without spaces (json.dumps with separators=(",", ":"))."""
    return _encoder(ensure_ascii, sort_keys, default).encode(value)


def compact_bytes(value: Any, *, ensure_ascii: bool = True, sort_keys: bool = False,
                  default: Callable[[Any], Any] | None = None) -> bytes:
    """Return `value` as compact JSON encoded in UTF-8."""
    return _encoder(ensure_ascii, sort_keys, default).encode(value).encode()


@cache
def _encoder(ensure_ascii: bool, sort_keys: bool, default: Callable[[Any], Any] | None) -> json.JSONEncoder:
    # json.dumps with any option builds a new encoder per call; these few are built once and shared
    # (an encoder keeps no state between calls, so threads may share it).
    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii, sort_keys=sort_keys, default=default)
