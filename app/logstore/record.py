"""LogRecord: what the request log keeps about one gateway call, and its conversion to a table row."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.jsonwire import compact

# Error text is for a human reading a log line; a bounded size keeps one bad upstream from bloating the file.
MAX_ERROR_CHARS = 1000

# Table columns in insertion order; `id` (the rowid) is assigned by SQLite at commit.
COLUMNS: tuple[str, ...] = (
    "trace_id", "ts", "key_name", "provider", "target_path", "method", "route", "path", "status",
    "upstream_status", "latency_ms", "upstream_ms", "retries", "cache_status", "model", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "total_tokens", "search_units", "cost_usd",
    "unknown_price", "metadata", "error", "client_ip",
)

Row = tuple[Any, ...]


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, per request
class LogRecord:
    """One gateway call as the request log keeps it: no bodies, no secrets."""

    trace_id: str
    ts: float
    key_name: str | None
    provider: str | None
    target_path: str | None
    method: str
    route: str
    path: str
    status: int
    upstream_status: int | None
    latency_ms: float
    upstream_ms: float | None
    retries: int
    cache_status: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    search_units: int | None
    cost_usd: float | None
    unknown_price: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The provider's own total when it reports one; otherwise input + output is stored.
    total_tokens: int | None = None
    # The peer, or the client a trusted proxy reported (docs/observability.md, Client address).
    client_ip: str | None = None


def to_row(rec: LogRecord) -> Row:
    """Return the table row of a record, coercing each field to the column's type (raises on nonsense)."""
    total = rec.total_tokens if rec.total_tokens is not None else _sum_or_none(rec.input_tokens, rec.output_tokens)
    return (
        str(rec.trace_id), float(rec.ts), _text(rec.key_name), _text(rec.provider), _text(rec.target_path),
        str(rec.method), str(rec.route), str(rec.path), int(rec.status), _int(rec.upstream_status),
        float(rec.latency_ms), _float(rec.upstream_ms), int(rec.retries), _text(rec.cache_status), _text(rec.model),
        _int(rec.input_tokens), _int(rec.output_tokens), _int(rec.cache_read_tokens), _int(rec.cache_write_tokens),
        _int(total), _int(rec.search_units), _float(rec.cost_usd), int(bool(rec.unknown_price)),
        _metadata_json(rec.metadata), _error_text(rec.error), _text(rec.client_ip),
    )


def from_row(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    """Return a stored row as a dict, with metadata parsed and unknown_price as a bool."""
    out = dict(zip(names, values, strict=True))
    if "metadata" in out:
        out["metadata"] = json.loads(out["metadata"]) if out["metadata"] else {}
    if "unknown_price" in out:
        out["unknown_price"] = bool(out["unknown_price"])
    return out


def _text(value: Any) -> str | None:
    """Return value as text, keeping None."""
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    """Return value as an int, keeping None."""
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    """Return value as a finite float, or None."""
    if value is None:
        return None
    number = float(value)
    # SQLite stores NaN as NULL anyway; infinities would poison every SUM of the column.
    return number if math.isfinite(number) else None


def _sum_or_none(*values: int | None) -> int | None:
    """Return the sum of the values present, or None if none is."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """Return the metadata tags as compact JSON text."""
    if not metadata:
        return "{}"
    # default=str: a tag value the caller did not stringify must not cost the whole batch.
    return compact(dict(metadata), ensure_ascii=False, default=str)


def _error_text(error: str | None) -> str | None:
    """Return the error text cut to MAX_ERROR_CHARS."""
    # Secrets are the caller's to redact (the CallRecord masks them by value, name and shape with app.redact before
    # the cut, so no secret is cut in two and half-kept). The store only bounds the size.
    return None if error is None else str(error)[:MAX_ERROR_CHARS]
