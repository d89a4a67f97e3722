"""The request log as a sink of finished calls (docs/observability.md).

Its own module, not re-exported by the package: importing the log store (as the settings check does in
gunicorn's master) does not load the call types.
"""

from __future__ import annotations

from typing import Protocol

from app.call.record import CallRecord
from app.logstore.record import LogRecord


class Recorder(Protocol):
    """What the sink writes to: a LogStore (or anything that takes its records)."""

    def record(self, rec: LogRecord) -> None: ...


class RequestLogSink:
    """Queues each finished call for the request log's background writer."""

    def __init__(self, store: Recorder) -> None:
        self.store = store

    def write(self, record: CallRecord) -> None:
        """Queue the call's log record (never waits on disk: the store's writer thread does)."""
        self.store.record(log_record(record))


def log_record(call: CallRecord) -> LogRecord:
    """Return the request-log record of a finished call (its text already masked: docs/security.md)."""
    return LogRecord(
        trace_id=call.trace_id, ts=call.ended_at, key_name=call.key_name, provider=call.provider,
        target_path=call.option_index, method=call.method, route=call.route, path=call.path, status=call.status,
        upstream_status=call.upstream_status, latency_ms=round(call.latency_s * 1000, 3),
        upstream_ms=round(call.upstream_ms, 3) if call.upstream_ms is not None else None, retries=call.retries,
        cache_status=call.cache_status, model=call.model or None, input_tokens=call.input_tokens,
        output_tokens=call.output_tokens, cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=call.cache_write_tokens, search_units=call.search_units, cost_usd=call.cost_usd,
        unknown_price=call.unknown_price, metadata=call.metadata, error=call.error, client_ip=call.client_ip)
