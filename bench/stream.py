"""Streamed time to first byte and per-event arrival, measured with http.client (no buffering client)."""

from __future__ import annotations

import http.client
import json
import statistics
import time
from dataclasses import dataclass

from bench.procs import LOOPBACK, BenchError

EVENTS = 3
INTERVAL_MS = 50
CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                        "messages": [{"role": "user", "content": "Say hello"}]}, separators=(",", ":"))


@dataclass(frozen=True)
class StreamTiming:
    """One streamed call: ms from sending the request to the first body byte, and to each complete event."""

    ttfb_ms: float
    events_ms: tuple[float, ...]

    def gaps_ms(self) -> list[float]:
        """Return the time between consecutive events."""
        return [b - a for a, b in zip(self.events_ms, self.events_ms[1:], strict=False)]


def stream_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the headers of a paced stream request (the fake provider's control headers included)."""
    return {"Content-Type": "application/json", "Authorization": "Bearer x",
            "x-fake-event-interval-ms": str(INTERVAL_MS), "x-fake-events": str(EVENTS), **(extra or {})}


def stream_once(port: int, path: str, headers: dict[str, str]) -> StreamTiming:
    """Send one streamed chat request and time the first body byte and every complete SSE event."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.connect()  # connection set-up is not part of the measured time
        sent = time.perf_counter()
        conn.request("POST", path, body=CHAT_BODY, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"stream via port {port}{path} answered {response.status}: {response.read()[:300]!r}")
        return _read_events(response, sent)
    finally:
        conn.close()


def _read_events(response: http.client.HTTPResponse, sent: float) -> StreamTiming:
    """Read the body as it arrives, noting when the first byte and each blank-line-ended event land."""
    first: float | None = None
    events: list[float] = []
    pending = b""
    while chunk := response.read1(65536):
        now = time.perf_counter()
        first = now if first is None else first
        pending += chunk
        while b"\n\n" in pending:
            _, pending = pending.split(b"\n\n", 1)
            events.append((now - sent) * 1000)
    if first is None:
        raise BenchError("the stream had no body")
    return StreamTiming((first - sent) * 1000, tuple(events))


@dataclass(frozen=True)
class Route:
    """Where one side of the comparison sends its streamed call."""

    port: int
    path: str
    headers: dict[str, str]


def median_ttfb(side: list[StreamTiming]) -> float:
    """Return the median time to first byte of one side."""
    return statistics.median(t.ttfb_ms for t in side)


def median_event(side: list[StreamTiming], index: int) -> float:
    """Return the median arrival time of event `index` on one side."""
    return statistics.median(t.events_ms[index] for t in side)


def median_gap(side: list[StreamTiming], index: int) -> float:
    """Return the median gap between event `index` and the one before it."""
    return statistics.median(t.gaps_ms()[index - 1] for t in side)


def event_count(sides: dict[str, list[StreamTiming]]) -> int:
    """Return how many events every call had (the smallest count seen)."""
    return min(len(t.events_ms) for side in sides.values() for t in side)


def bunched(side: list[StreamTiming]) -> int:
    """Count calls in which an event came less than half an interval after the one before (it was held back)."""
    return sum(1 for t in side if any(gap < INTERVAL_MS / 2 for gap in t.gaps_ms()))


def compare(routes: dict[str, Route], n: int) -> dict[str, list[StreamTiming]]:
    """Time n streamed calls on every route, round-robin so drift hits all alike, after two warm-ups each."""
    for _ in range(2):
        for route in routes.values():
            stream_once(route.port, route.path, route.headers)
    sides: dict[str, list[StreamTiming]] = {name: [] for name in routes}
    for _ in range(n):
        for name, route in routes.items():
            sides[name].append(stream_once(route.port, route.path, route.headers))
    return sides
