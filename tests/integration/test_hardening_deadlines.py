"""Timeouts are deadlines under gunicorn: an upstream or webhook that trickles bytes cannot stretch them.

The trickler sends one byte of its answer every 0.25 s (10+ s in all), so a per-read timer of 1 s never fires;
before the fix each of these calls took the whole trickle (docs/security.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.fakes.trickle import Trickler, http_answer
from tests.integration.conftest import Gateway

LIMIT_S = 2.5  # a 1 s timeout plus room for a busy machine
RERANK = {"model": "m", "query": "q", "documents": ["a"]}
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    with Trickler(http_answer(pad=40)) as server:
        yield server


def call(gateway: Gateway, path: str, body: dict, **headers: str) -> tuple[requests.Response, float]:
    started = time.monotonic()
    res = requests.post(f"{gateway.url}{path}", json=body, timeout=30, headers={
        "x-portkey-api-key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_SECRET}", **headers})
    return res, time.monotonic() - started


def test_trickled_headers_get_the_408_at_the_request_timeout(gateway: Gateway, trickler: Trickler) -> None:
    res, elapsed = call(gateway, "/v1/rerank", RERANK, **{
        "x-portkey-provider": "cohere", "x-portkey-custom-host": f"{trickler.url}/v1",
        "x-portkey-request-timeout": "1000"})
    assert res.status_code == 408, res.text
    assert res.json()["error"] == {"message": "Request exceeded the timeout sent in the request: 1000ms",
                                   "type": "timeout_error", "param": None, "code": None}
    assert elapsed < LIMIT_S


def test_fallback_moves_on_at_the_deadline(gateway: Gateway, trickler: Trickler,
                                           fake_provider: FakeProvider) -> None:
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "cohere", "custom_host": f"{trickler.url}/v1", "request_timeout": 1000},
        {"provider": "cohere", "custom_host": f"{fake_provider.url}/v1"}]}
    res, elapsed = call(gateway, "/v1/rerank", RERANK, **{"x-portkey-config": json.dumps(config)})
    assert res.status_code == 200, res.text
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert trickler.connections == 1 and len(fake_provider.requests) == 1
    assert elapsed < LIMIT_S


def test_trickling_webhook_is_cut_at_its_timeout(gateway: Gateway, trickler: Trickler,
                                                 fake_provider: FakeProvider) -> None:
    config = {"provider": "openai", "custom_host": f"{fake_provider.url}/v1", "input_guardrails": [
        {"webhook": {"webhookURL": f"{trickler.url}/hook", "timeout": 1000}, "deny": True}]}
    res, elapsed = call(gateway, "/v1/chat/completions", CHAT, **{"x-portkey-config": json.dumps(config)})
    assert res.status_code == 446, res.text
    check = res.json()["hook_results"]["before_request_hooks"][0]["checks"][0]
    assert check["error"] == "webhook timed out after 1000 ms"
    assert fake_provider.requests == []
    assert elapsed < LIMIT_S


def test_started_stream_is_not_cut_by_the_request_timeout(gateway: Gateway, fake_provider: FakeProvider) -> None:
    # The answer starts at once, then waits 1.2 s twice: longer than the 1 s request timeout, each time and in all.
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{fake_provider.url}/v1",
               "x-portkey-request-timeout": "1000", "x-fake-events": "1", "x-fake-event-interval-ms": "1200",
               "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"}
    res, elapsed = call(gateway, "/v1/chat/completions", {**CHAT, "stream": True}, **headers)
    assert res.status_code == 200, res.text
    events = [line for line in res.text.splitlines() if line.startswith("data:")]
    assert len(events) == 3 and events[-1] == "data: [DONE]"
    assert elapsed > 2.0  # the pauses really happened
