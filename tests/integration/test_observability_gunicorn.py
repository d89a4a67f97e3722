"""Usage, cost, request logs, admin API and metrics through gunicorn, proxy traffic included."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway, gateway_toml

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def via(fake: FakeProvider, provider: str = "cohere", **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider,
            "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}", **extra}


def logged(gateway: Gateway, trace_id: str, timeout: float = 5.0) -> dict:
    """Return the request-log row of a trace id, waiting for the background writer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = requests.get(f"{gateway.url}/admin/logs", params={"trace_id": trace_id}, headers=ADMIN).json()["logs"]
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"{trace_id} never reached the request log")


def test_proxy_rerank_is_logged_with_search_units_and_cost(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["a"]},
                        headers=via(fake_provider, **{"x-portkey-trace-id": "obs-rerank",
                                                      "x-portkey-metadata": json.dumps({"team": "search"})}))
    assert res.status_code == 200
    row = logged(gateway, "obs-rerank")
    assert (row["provider"], row["route"], row["status"], row["key_name"]) == ("cohere", "proxy", 200, "it-team")
    assert row["search_units"] == 1
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["metadata"] == {"team": "search"}


def test_streamed_chat_usage_is_logged(gateway: Gateway, fake_provider: FakeProvider) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=body,
                        headers=via(fake_provider, "openai", **{"x-portkey-trace-id": "obs-stream"}))
    assert res.status_code == 200 and "[DONE]" in res.text
    row = logged(gateway, "obs-stream")
    assert row["input_tokens"] and row["output_tokens"]
    assert row["model"]


def test_unknown_model_has_no_cost_and_is_flagged(gateway: Gateway, fake_provider: FakeProvider) -> None:
    body = {"model": "my-own-finetune-xyz", "messages": [{"role": "user", "content": "hi"}]}
    requests.post(f"{gateway.url}/v1/chat/completions", json=body,
                  headers=via(fake_provider, "openai", **{"x-portkey-trace-id": "obs-unknown"}))
    row = logged(gateway, "obs-unknown")
    assert row["cost_usd"] is None and row["unknown_price"]


def test_admin_api_needs_the_admin_key(gateway: Gateway) -> None:
    assert requests.get(f"{gateway.url}/admin/logs").status_code == 401
    assert requests.get(f"{gateway.url}/admin/logs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert requests.get(f"{gateway.url}/admin/logs", auth=("admin", ADMIN_KEY)).status_code == 200
    assert requests.get(f"{gateway.url}/admin/logs", headers={"x-portkey-api-key": GATEWAY_KEY}).status_code == 401


def test_analytics_groups_by_provider(gateway: Gateway, fake_provider: FakeProvider) -> None:
    for _ in range(3):
        requests.post(f"{gateway.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=via(fake_provider))
    trace = "obs-analytics-last"
    requests.post(f"{gateway.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                  headers=via(fake_provider, **{"x-portkey-trace-id": trace}))
    logged(gateway, trace)
    groups = requests.get(f"{gateway.url}/admin/analytics", params={"group_by": "provider"},
                          headers=ADMIN).json()["groups"]
    cohere = next(g for g in groups if g["group"] == "cohere")
    assert cohere["requests"] >= 4 and cohere["p50_ms"] is not None
    assert requests.get(f"{gateway.url}/admin/analytics", params={"group_by": "password"},
                        headers=ADMIN).status_code == 400


def test_metrics_count_calls_across_workers(fake: FakeProvider) -> None:
    fake.reset()
    gw = Gateway(gateway_toml(fake.url), workers=2).start()
    try:
        for _ in range(20):
            requests.post(f"{gw.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=via(fake))
        # A worker applies its calls every 0.25 s; the one answering /metrics applies its own first.
        deadline = time.monotonic() + 3
        while True:
            text = requests.get(f"{gw.url}/metrics", headers=ADMIN).text
            counted = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                       if x.startswith("portico_requests_total{") and 'provider="cohere"' in x and 'status="200"' in x]
            if counted == [20.0] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert counted == [20.0]
        assert "portico_in_flight_requests" in text
        assert requests.get(f"{gw.url}/metrics").status_code == 401
        for secret in (PROVIDER_SECRET, GATEWAY_KEY, ADMIN_KEY, "co-catalog-secret-123"):
            assert secret not in text
    finally:
        gw.stop()


def test_secrets_never_reach_the_request_log(gateway: Gateway, fake_provider: FakeProvider) -> None:
    requests.post(f"{gateway.url}/v1/rerank?key={PROVIDER_SECRET}", json={"query": "q", "documents": ["a"]},
                  headers=via(fake_provider, **{"x-portkey-trace-id": "obs-secret"}))
    logged(gateway, "obs-secret")
    dump = json.dumps(requests.get(f"{gateway.url}/admin/logs", params={"limit": 1000}, headers=ADMIN).json())
    for secret in (PROVIDER_SECRET, GATEWAY_KEY, ADMIN_KEY, "co-catalog-secret-123"):
        assert secret not in dump


@pytest.mark.parametrize("stop_mid_load", [pytest.param(False, marks=pytest.mark.slow), True])
def test_every_answered_request_is_in_the_store(fake: FakeProvider, stop_mid_load: bool) -> None:
    """4 workers; 10,000 calls from 8 threads (or SIGTERM after some): rows == answered calls, no duplicates."""
    fake.reset()
    gw = Gateway(gateway_toml(fake.url), workers=4, threads=4).start()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        session = requests.Session()
        for i in range(1250):
            if stop.is_set():
                return
            trace = f"load-{worker}-{i}"
            try:
                res = session.post(f"{gw.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                                   headers=via(fake, **{"x-portkey-trace-id": trace}), timeout=10)
            except requests.RequestException:
                return
            if res.status_code == 200:
                with lock:
                    answered.append(trace)
    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    if stop_mid_load:
        time.sleep(0.8)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        stop.set()
    for t in threads:
        t.join()
    gw.stop()
    import sqlite3
    with sqlite3.connect(gw.logs_path) as db:
        traces = [row[0] for row in db.execute("SELECT trace_id FROM requests")]
    assert len(traces) == len(set(traces))
    assert set(answered) <= set(traces)
    if not stop_mid_load:
        assert len(traces) == 10_000
    else:
        assert 0 < len(answered) < 10_000
