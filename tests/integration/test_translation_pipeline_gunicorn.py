"""Translated calls through the rest of the pipeline: usage and cost, cache, output guardrails, fallback."""

from __future__ import annotations

import json

import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import ANTHROPIC_TEXT, OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway
from tests.integration.test_observability_gunicorn import logged

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def anthropic(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "anthropic",
            "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}", **extra}


def test_a_translated_answer_is_logged_with_its_usage_and_cost(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=BODY,
                        headers=anthropic(fake_provider, **{"x-portkey-trace-id": "tr-usage"}))
    assert res.status_code == 200
    answer = res.json()
    assert answer["choices"][0]["message"]["content"] == ANTHROPIC_TEXT
    row = logged(gateway, "tr-usage")
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == (
        "anthropic", answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])
    assert row["model"] == "claude-sonnet-4-5" and row["cost_usd"] > 0


def test_a_translated_stream_is_logged_with_the_usage_of_its_last_chunk(gateway: Gateway,
                                                                        fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/chat/completions", json={**BODY, "stream": True},
                        headers=anthropic(fake_provider, **{"x-portkey-trace-id": "tr-stream"}))
    events = [line.removeprefix("data: ") for line in res.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    row = logged(gateway, "tr-stream")
    assert (row["input_tokens"], row["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])


def test_a_translated_answer_is_cached_in_the_unified_shape(gateway: Gateway, fake_provider: FakeProvider) -> None:
    config = json.dumps({"provider": "anthropic", "custom_host": f"{fake_provider.url}/v1",
                         "cache": {"mode": "simple", "max_age": 60}})
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": config, "Authorization": "Bearer k",
               "x-portkey-cache-namespace": "tr-cache"}
    first = requests.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=headers)
    second = requests.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=headers)
    assert [first.headers["x-portkey-cache-status"], second.headers["x-portkey-cache-status"]] == ["MISS", "HIT"]
    assert second.json() == first.json()
    assert second.json()["object"] == "chat.completion"
    assert len(fake_provider.requests) == 1


def test_output_guardrails_read_the_translated_answer(gateway: Gateway, fake_provider: FakeProvider) -> None:
    config = json.dumps({"provider": "anthropic", "custom_host": f"{fake_provider.url}/v1",
                         "output_guardrails": [{"default.contains": {"words": ["anthropic"], "operator": "none"},
                                                "deny": True}]})
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=BODY,
                        headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": config,
                                 "Authorization": "Bearer k"})
    assert res.status_code == 446  # ANTHROPIC_TEXT says "anthropic": the check read the translated content
    assert res.json()["error"]["type"] == "hooks_failed"


def test_fallback_from_a_failing_translated_target_answers_in_the_same_shape(gateway: Gateway,
                                                                              fake_provider: FakeProvider) -> None:
    config = json.dumps({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "google", "custom_host": f"{fake_provider.url}", "api_key": "invalid-key"},
        {"provider": "openai", "custom_host": f"{fake_provider.url}/v1", "api_key": "sk-x"}]})
    res = requests.post(f"{gateway.url}/v1/chat/completions",
                        json={**BODY, "model": "gemini-2.5-flash"},
                        headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": config})
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert res.json()["choices"][0]["message"]["content"] == OPENAI_TEXT
    assert [r.path.split(":")[0] for r in fake_provider.requests] == [
        "/v1beta/models/gemini-2.5-flash", "/v1/chat/completions"]
