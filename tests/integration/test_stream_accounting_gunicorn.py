"""Through gunicorn: a stream the client abandons is recorded as 499 `client closed`, not as a 200.

Before, a client that closed its connection mid-stream left a record saying 200 with no error, in the request
log, the access line and the metrics alike (docs/observability.md).
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def stream_headers(fake: FakeProvider, trace_id: str, events: int, interval_ms: int) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}",
            "x-portkey-trace-id": trace_id, "x-fake-events": str(events),
            "x-fake-event-interval-ms": str(interval_ms),
            "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"}


def logged(gateway: Gateway, trace_id: str, timeout: float = 8.0) -> dict:
    """Return the request-log row of a trace id, waiting for the stream's end and the background writer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = requests.get(f"{gateway.url}/admin/logs", params={"trace_id": trace_id}, headers=ADMIN,
                            timeout=5).json()["logs"]
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"{trace_id} never reached the request log")


def read_events_then_leave(gateway: Gateway, headers: dict[str, str], events: int) -> None:
    """Start a streamed call on a raw socket, read `events` events of it, then close the connection."""
    body = json.dumps(CHAT).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data: ") < events:
            data = sock.recv(65536)
            assert data, f"the stream ended before {events} events: {received[-300:]!r}"
            received += data
        assert received.startswith(b"HTTP/1.1 200"), received[:200]


def access_lines(gateway: Gateway, trace_id: str) -> list[dict]:
    """Return the JSON access lines gunicorn's stdout holds for a trace id."""
    lines = []
    for line in gateway.logs().splitlines():
        if line.startswith("{") and trace_id in line:
            record = json.loads(line)
            if record.get("trace_id") == trace_id:
                lines.append(record)
    return lines


def counted_499(gateway: Gateway) -> float:
    """Return portico_requests_total for the unified route's OpenAI calls answered 499."""
    text = requests.get(f"{gateway.url}/metrics", headers=ADMIN, timeout=5).text
    series = 'portico_requests_total{key="it-team",provider="openai",route="unified",status="499"} '
    return sum(float(line[len(series):]) for line in text.splitlines() if line.startswith(series))


def test_a_stream_the_client_abandons_is_recorded_as_499_client_closed(gateway: Gateway,
                                                                      fake_provider: FakeProvider) -> None:
    trace_id = f"abandoned-{uuid.uuid4()}"
    before = counted_499(gateway)
    # 100 events 50 ms apart: the stream would run 5 s; the client leaves after two.
    read_events_then_leave(gateway, stream_headers(fake_provider, trace_id, events=100, interval_ms=50), events=2)
    row = logged(gateway, trace_id)
    assert (row["status"], row["error"], row["upstream_status"]) == (499, "client closed", 200), row
    # The access line says the same.
    deadline = time.monotonic() + 5
    while not access_lines(gateway, trace_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = access_lines(gateway, trace_id)
    assert (line["status"], line["error"], line["upstream_status"]) == (499, "client closed", 200), line
    # And the metrics count it under 499.
    deadline = time.monotonic() + 5
    while counted_499(gateway) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted_499(gateway) == before + 1

def test_a_stream_read_to_the_end_is_still_a_200(gateway: Gateway, fake_provider: FakeProvider) -> None:
    trace_id = f"complete-{uuid.uuid4()}"
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT,
                        headers=stream_headers(fake_provider, trace_id, events=5, interval_ms=10), timeout=10)
    assert res.status_code == 200 and "[DONE]" in res.text
    row = logged(gateway, trace_id)
    assert (row["status"], row["error"], row["upstream_status"]) == (200, None, 200), row
