"""Logging: one JSON access line per call, secrets redacted, no tracebacks for expected stream aborts."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import Any

from app.call.record import CallRecord
from app.jsonwire import compact
from app.redact import SecretFilter
from app.redact import redact as redact  # re-exported: older imports read it here


def setup_logging(level: str) -> None:
    """Send gateway logs to stderr and access lines (JSON) to stdout, once per process."""
    app_log = logging.getLogger("app")
    app_log.setLevel(level.upper())
    # gunicorn's logging set-up disables loggers that existed before it (ours, via gunicorn.conf.py).
    app_log.disabled = False
    if getattr(app_log, "_portico_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    # On the handler, so lines of every app.* logger pass it (a logger's filters see only its own lines).
    handler.addFilter(SecretFilter())
    app_log.addHandler(handler)
    app_log.propagate = False
    gunicorn_log = logging.getLogger("gunicorn.error")
    gunicorn_log.addFilter(StreamAbortFilter())
    gunicorn_log.addFilter(SecretFilter())
    app_log._portico_configured = True  # type: ignore[attr-defined]


class StreamAbortFilter(logging.Filter):
    """Turn gunicorn's traceback for a deliberately cut stream into one plain line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "StreamAborted":
            record.msg, record.args = "stream cut after an upstream failure: %s", (str(exc),)
            record.exc_info = None
            record.exc_text = None
        return True


class AccessLines:
    """Access lines to stdout: buffered, written whole, flushed every `interval` seconds and on exit.

    A write and flush per call costs a system call on the request path; shippers read a line a few
    hundred milliseconds later just as well.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._pid = -1
        atexit.register(self.flush)

    def write(self, line: str) -> None:
        """Queue one line; start this process's flusher on first use (gunicorn forks after import)."""
        with self._lock:
            self._lines.append(line)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="access-lines", daemon=True).start()

    def flush(self) -> None:
        """Write every queued line to stdout now."""
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except (OSError, ValueError):
                pass  # stdout gone (shutdown); nothing better to do with an access line


access_lines = AccessLines()


def write_access_line(line: str) -> None:
    """Queue one JSON access line for stdout."""
    access_lines.write(line)


def access_line(record: CallRecord) -> str:
    """Return the JSON access line of a call; no bodies, no secrets (docs/security.md)."""
    line: dict[str, Any] = {
        "ts": round(record.ended_at, 3),
        "trace_id": record.trace_id,
        "client_ip": record.client_ip,
        "key": record.key_name,
        "provider": record.provider,
        "route": record.route,
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "status": record.status,
        "upstream_status": record.upstream_status,
        "duration_ms": round(record.latency_s * 1000, 2),
        "upstream_ms": round(record.upstream_ms, 2) if record.upstream_ms is not None else None,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
    }
    line.update(usage_fields(record))
    if record.error:
        line["error"] = record.error
    return compact(line)


def usage_fields(record: CallRecord) -> dict[str, Any]:
    """Return the usage and cost fields of the access line (only those the answer reported)."""
    fields: dict[str, Any] = {}
    if record.model:
        fields["model"] = record.model
    fields.update({f"{kind}_tokens": count for kind, count in record.tokens.items()})
    if record.search_units:
        fields["search_units"] = record.search_units
    if record.cost_usd is not None:
        fields["cost_usd"] = record.cost_usd
    if record.unknown_price:
        fields["unknown_price"] = True
    return fields


class AccessLineSink:
    """Writes each finished call as one JSON line on stdout (docs/observability.md)."""

    def write(self, record: CallRecord) -> None:
        """Queue the call's access line."""
        write_access_line(access_line(record))
