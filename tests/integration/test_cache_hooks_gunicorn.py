"""Cache and guardrail hooks end to end: gunicorn, the fake provider, and a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import Gateway, gateway_toml
from tests.integration.test_robustness import wait_for_line

CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "Tell me about the weather in Paris"}]}


def call(gateway: Gateway, fake: FakeProvider, config: dict, path: str = "/v1/chat/completions",
         body: dict | None = None, method: str = "POST", **headers: str) -> requests.Response:
    config = {"provider": "openai", "custom_host": f"{fake.url}/v1", **config}
    return requests.request(method, f"{gateway.url}{path}", json=body if body is not None else CHAT, timeout=20,
                            headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config),
                                     "Authorization": f"Bearer {PROVIDER_SECRET}", **headers})


SIMPLE = {"cache": {"mode": "simple", "max_age": 60}}


def test_second_identical_call_is_a_hit(gateway: Gateway, fake_provider: FakeProvider) -> None:
    first = call(gateway, fake_provider, SIMPLE, **{"x-portkey-cache-namespace": "hit-test"})
    second = call(gateway, fake_provider, SIMPLE, **{"x-portkey-cache-namespace": "hit-test"})
    assert first.headers["x-portkey-cache-status"] == "MISS"
    assert second.headers["x-portkey-cache-status"] == "HIT"
    assert second.json() == first.json()
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert len(fake_provider.requests) == 1
    hit = wait_for_line(gateway, second.headers["x-portkey-trace-id"])  # access lines are flushed every 0.25 s
    assert hit["cost_usd"] == 0.0 and "input_tokens" not in hit  # a cached answer used no provider tokens


def test_cache_statuses(gateway: Gateway, fake_provider: FakeProvider) -> None:
    assert call(gateway, fake_provider, {}).headers["x-portkey-cache-status"] == "DISABLED"
    ns = {"x-portkey-cache-namespace": "status-test"}
    assert call(gateway, fake_provider, SIMPLE, **ns).headers["x-portkey-cache-status"] == "MISS"
    refreshed = call(gateway, fake_provider, SIMPLE, **ns, **{"x-portkey-cache-force-refresh": "true"})
    assert refreshed.headers["x-portkey-cache-status"] == "REFRESH"
    assert call(gateway, fake_provider, SIMPLE, **ns).headers["x-portkey-cache-status"] == "HIT"
    assert len(fake_provider.requests) == 3
    semantic = call(gateway, fake_provider, {"cache": {"mode": "semantic"}}, **ns)
    assert semantic.headers["x-portkey-cache-status"] == "MISS"


def test_namespace_and_body_partition_the_cache(gateway: Gateway, fake_provider: FakeProvider) -> None:
    call(gateway, fake_provider, SIMPLE, **{"x-portkey-cache-namespace": "a"})
    other = call(gateway, fake_provider, SIMPLE, **{"x-portkey-cache-namespace": "b"})
    assert other.headers["x-portkey-cache-status"] == "MISS"
    changed = call(gateway, fake_provider, SIMPLE, body={**CHAT, "temperature": 0.5},
                   **{"x-portkey-cache-namespace": "a"})
    assert changed.headers["x-portkey-cache-status"] == "MISS"


def test_errors_and_streams_are_not_stored(gateway: Gateway, fake_provider: FakeProvider) -> None:
    ns = {"x-portkey-cache-namespace": "errors"}
    for _ in range(2):
        fake_provider.enqueue(status=500, body={"error": "boom"})
        assert call(gateway, fake_provider, SIMPLE, **ns).status_code == 500
    stream = {**CHAT, "stream": True}
    for _ in range(2):
        res = call(gateway, fake_provider, SIMPLE, body=stream, **ns)
        assert res.headers["x-portkey-cache-status"] == "MISS"
        assert res.text.rstrip().endswith("data: [DONE]")
    assert len(fake_provider.requests) == 4


def test_proxy_get_is_cached_on_path_and_query(gateway: Gateway, fake_provider: FakeProvider) -> None:
    config = {"provider": "cohere", **SIMPLE}
    ns = {"x-portkey-cache-namespace": "proxy-get"}
    first = call(gateway, fake_provider, config, path="/v1/collections/c1?page=2", method="GET", body=None, **ns)
    second = call(gateway, fake_provider, config, path="/v1/collections/c1?page=2", method="GET", body=None, **ns)
    third = call(gateway, fake_provider, config, path="/v1/collections/c1?page=3", method="GET", body=None, **ns)
    assert [r.headers["x-portkey-cache-status"] for r in (first, second, third)] == ["MISS", "HIT", "MISS"]
    assert len(fake_provider.requests) == 2


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_two_gateways_share_hits_through_redis(fake: FakeProvider, redis_server: RedisServer) -> None:
    fake.reset()
    extra = f'[cache]\nbackend = "{redis_server.url}"\n'
    first, second = Gateway(gateway_toml(fake.url, extra)).start(), Gateway(gateway_toml(fake.url, extra)).start()
    try:
        ns = {"x-portkey-cache-namespace": "shared"}
        assert call(first, fake, SIMPLE, **ns).headers["x-portkey-cache-status"] == "MISS"
        assert call(second, fake, SIMPLE, **ns).headers["x-portkey-cache-status"] == "HIT"
        assert len(fake.requests) == 1
        redis_server.stop()
        down = call(second, fake, SIMPLE, **{"x-portkey-cache-namespace": "while-down"})
        assert down.status_code == 200 and down.headers["x-portkey-cache-status"] == "MISS"
    finally:
        redis_server.start()
        first.stop()
        second.stop()


def deny_config(deny: bool) -> dict:
    return {"input_guardrails": [{"default.contains": {"words": ["weather"], "operator": "none"}, "deny": deny}]}


def test_denied_input_never_reaches_the_provider(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = call(gateway, fake_provider, deny_config(True))
    assert res.status_code == 446
    body = res.json()
    assert body["error"]["type"] == "hooks_failed"
    assert body["hook_results"]["before_request_hooks"][0]["verdict"] is False
    assert fake_provider.requests == []


def test_failed_check_without_deny_is_246_with_the_answer(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = call(gateway, fake_provider, deny_config(False))
    assert res.status_code == 246
    body = res.json()
    assert body["choices"][0]["message"]["content"]
    assert body["hook_results"]["before_request_hooks"][0]["verdict"] is False
    assert len(fake_provider.requests) == 1


def test_output_guardrail_deny_replaces_the_answer(gateway: Gateway, fake_provider: FakeProvider) -> None:
    config = {"output_guardrails": [{"default.contains": {"words": ["fake"], "operator": "none"}, "deny": True}]}
    res = call(gateway, fake_provider, config)
    assert res.status_code == 446
    assert res.json()["hook_results"]["after_request_hooks"][0]["verdict"] is False


def test_failed_before_hook_keeps_the_stream_intact(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = call(gateway, fake_provider, deny_config(False), body={**CHAT, "stream": True})
    assert res.status_code == 246
    assert res.headers["Content-Type"].startswith("text/event-stream")
    assert res.text.rstrip().endswith("data: [DONE]")


def test_hooks_are_skipped_on_the_proxy(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = call(gateway, fake_provider, {"provider": "cohere", **deny_config(True)}, path="/v1/rerank",
               body={"query": "weather", "documents": ["a"]})
    assert res.status_code == 200
    assert len(fake_provider.requests) == 1
