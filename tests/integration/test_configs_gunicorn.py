"""The config engine end to end: gunicorn in front of two fake providers on two custom hosts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway


@pytest.fixture(scope="module")
def second() -> Iterator[FakeProvider]:
    """Run a second fake provider, reached as `localhost` so it is a different custom host."""
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def backup(second: FakeProvider) -> FakeProvider:
    second.reset()
    return second


def host_of(fake: FakeProvider, name: str = "127.0.0.1") -> str:
    return fake.url.replace("127.0.0.1", name) + "/v1"


def post(gateway: Gateway, config: dict, path: str = "/v1/rerank", body: dict | None = None,
         **headers: str) -> requests.Response:
    return requests.post(f"{gateway.url}{path}", json=body or {"model": "m", "query": "q", "documents": ["a"]},
                         headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config),
                                  "Authorization": f"Bearer {PROVIDER_SECRET}", **headers}, timeout=20)


def fallback(*targets: dict, **extra: object) -> dict:
    return {"strategy": {"mode": "fallback"}, "targets": list(targets), **extra}


def test_fallback_across_two_custom_hosts(gateway: Gateway, fake_provider: FakeProvider,
                                          backup: FakeProvider) -> None:
    fake_provider.enqueue(status=503, body={"error": "down"})
    res = post(gateway, fallback({"provider": "cohere", "custom_host": host_of(fake_provider)},
                                 {"provider": "cohere", "custom_host": host_of(backup, "localhost")}))
    assert res.status_code == 200, res.text
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert len(fake_provider.requests) == 1 and len(backup.requests) == 1
    assert backup.requests[0].body == fake_provider.requests[0].body


def test_timeout_then_fallback(gateway: Gateway, fake_provider: FakeProvider, backup: FakeProvider) -> None:
    fake_provider.enqueue(status=200, body={"late": True}, delay_ms=2000)
    res = post(gateway, fallback({"provider": "cohere", "custom_host": host_of(fake_provider),
                                  "request_timeout": 300},
                                 {"provider": "cohere", "custom_host": host_of(backup, "localhost")}))
    assert res.status_code == 200, res.text
    assert "results" in res.json()
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


def test_retry_then_success_counts_retries(gateway: Gateway, fake_provider: FakeProvider) -> None:
    for _ in range(2):
        fake_provider.enqueue(status=429, body={"error": "slow down"}, headers={"retry-after-ms": "10"})
    res = post(gateway, {"provider": "cohere", "custom_host": host_of(fake_provider),
                         "retry": {"attempts": 3, "use_retry_after_header": True}})
    assert res.status_code == 200
    assert res.headers["x-portkey-retry-attempt-count"] == "2"
    assert len(fake_provider.requests) == 3


def test_conditional_route_by_metadata(gateway: Gateway, fake_provider: FakeProvider,
                                       backup: FakeProvider) -> None:
    config = {"strategy": {"mode": "conditional", "default": "free",
                           "conditions": [{"query": {"metadata.plan": {"$in": ["pro", "team"]}}, "then": "paid"}]},
              "targets": [{"name": "free", "provider": "cohere", "custom_host": host_of(fake_provider)},
                          {"name": "paid", "provider": "cohere", "custom_host": host_of(backup, "localhost")}]}
    res = post(gateway, config, **{"x-portkey-metadata": json.dumps({"plan": "team"})})
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    res = post(gateway, config, **{"x-portkey-metadata": json.dumps({"plan": "hobby"})})
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[0]"
    assert (len(fake_provider.requests), len(backup.requests)) == (1, 1)


@pytest.mark.parametrize("path, provider", [("/v1/rerank", "cohere"), ("/v1/chat/completions", "openai")])
def test_same_config_on_proxy_and_unified_route(gateway: Gateway, fake_provider: FakeProvider, backup: FakeProvider,
                                                path: str, provider: str) -> None:
    fake_provider.enqueue(status=500, body={"error": "boom"})
    body = {"model": "m", "query": "q", "documents": ["a"], "messages": [{"role": "user", "content": "hi"}]}
    res = post(gateway, fallback({"provider": provider, "custom_host": host_of(fake_provider)},
                                 {"provider": provider, "custom_host": host_of(backup, "localhost"),
                                  "override_params": {"model": "backup-model"}}), path=path, body=body)
    assert res.status_code == 200, res.text
    assert res.headers["x-portkey-provider"] == provider
    assert json.loads(backup.requests[0].body)["model"] == "backup-model"


def test_stream_falls_back_before_its_first_byte(gateway: Gateway, fake_provider: FakeProvider,
                                                 backup: FakeProvider) -> None:
    fake_provider.enqueue(status=503, body={"error": "overloaded"})
    config = fallback({"provider": "openai", "custom_host": host_of(fake_provider)},
                      {"provider": "openai", "custom_host": host_of(backup, "localhost")})
    with requests.post(f"{gateway.url}/v1/chat/completions", stream=True, timeout=20,
                       json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config),
                                "Authorization": f"Bearer {PROVIDER_SECRET}"}) as res:
        assert res.status_code == 200
        assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
        lines = [line for line in res.iter_lines() if line.startswith(b"data:")]
    assert lines[-1] == b"data: [DONE]"


def test_saved_config_and_catalog_target(fake: FakeProvider) -> None:
    fake.reset()
    saved = """
[configs.pc-fallback]
strategy = { mode = "fallback" }
targets = [ { provider = "@openai-fake", retry = { attempts = 1 } }, { provider = "@cohere-prod" } ]
"""
    from tests.integration.conftest import gateway_toml
    gw = Gateway(gateway_toml(fake.url, saved)).start()
    try:
        for _ in range(2):
            fake.enqueue(status=502, body={"error": "bad gateway"})
        res = requests.post(f"{gw.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": "pc-fallback"})
        assert res.status_code == 200, res.text
        assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
        assert [r.headers["authorization"] for r in fake.requests] == [
            "Bearer sk-catalog-openai-secret", "Bearer sk-catalog-openai-secret", "Bearer co-catalog-secret-123"]
    finally:
        gw.stop()


def test_openai_sdk_with_a_config(gateway: Gateway, fake_provider: FakeProvider, backup: FakeProvider) -> None:
    import openai
    fake_provider.enqueue(status=500, body={"error": {"message": "boom"}})
    config = fallback({"provider": "openai", "custom_host": host_of(fake_provider)},
                      {"provider": "openai", "custom_host": host_of(backup, "localhost")})
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                           default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config)})
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == OPENAI_TEXT
