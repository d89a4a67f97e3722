"""UsageReport: the usage a translated answer told its client, read from the objects the translator wrote.

A translated answer is built as data before it becomes bytes, so its usage is read from that data: the
byte tap (app/usage/tap.py) is only for answers relayed as the provider sent them. The objects are read
by the same UsageAccumulator, in the same way the tap reads their bytes, so the counts, the cache parts
and the model are the same as the tap's (docs/observability.md).
"""

from __future__ import annotations

import logging
from typing import Any

from app.usage.extract import MAX_DEPTH, NESTED_KEYS, UsageAccumulator
from app.usage.model import Usage

log = logging.getLogger(__name__)


class UsageReport:
    """Collect the usage of one translated answer: a whole body at once, or a stream event by event."""

    def __init__(self) -> None:
        self._acc = UsageAccumulator()

    @classmethod
    def of(cls, body: Any) -> UsageReport:
        """Return the report of a whole answer's body (the object sent to the client)."""
        report = cls()
        report._absorb(body)
        return report

    def event(self, payload: Any) -> None:
        """Read one streamed event's object; only those reporting usage count once the model is known.

        Content deltas repeat the model and carry no usage: like the tap, they are read only until a
        model is named, and the usage events (the last report wins) name the model the call is priced as.
        """
        if self._acc.model is None or reports_usage(payload):
            self._absorb(payload)

    def result(self) -> Usage:
        """Return the usage reported so far; the observer adds the request's model when none was named."""
        return self._acc.to_usage(None)

    def _absorb(self, obj: Any) -> None:
        try:
            self._acc.absorb(obj)
        except Exception:  # noqa: BLE001 - reading usage must never break the answer it describes
            log.debug("usage report could not read an object", exc_info=True)


def reports_usage(payload: Any, depth: int = 0) -> bool:
    """Return whether an object carries a usage block where the accumulator reads one (`usage: null` does not)."""
    if not isinstance(payload, dict) or depth > MAX_DEPTH:
        return False
    if payload.get("usage") is not None:
        return True
    return any(reports_usage(payload.get(key), depth + 1) for key in NESTED_KEYS)
