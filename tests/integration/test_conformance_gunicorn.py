"""Conformance fixes of issue 11 through gunicorn: option index, messages SDKs show, retry counts, error order,
Cohere v2 behind a path prefix, unknown routes."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends without -H 'Content-Type: application/json'


def headers(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_SECRET}",
            "x-portkey-custom-host": f"{fake.url}/v1", **extra}


def retries_total(gateway: Gateway) -> float:
    text = requests.get(f"{gateway.url}/metrics", headers=ADMIN, timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "portico_retries_total")


def logged(gateway: Gateway, trace_id: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = requests.get(f"{gateway.url}/admin/logs", params={"trace_id": trace_id}, headers=ADMIN,
                            timeout=5).json()["logs"]
        if rows:
            return rows[0]  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{trace_id} never reached the request log")


def test_a_header_only_call_reports_option_index_config(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10,
                        headers=headers(fake_provider, **{"x-portkey-provider": "openai"}))
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config"


def test_sdks_read_the_bad_value_in_the_message(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                           default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "opneai"})
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"].startswith("Invalid provider passed: 'opneai' (did you mean 'openai'?)")
    config = {"strategy": {"mode": "fallback"}, "targets": [{"provider": "opneai"}, {"provider": "openai"}]}
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=PROVIDER_SECRET, max_retries=0,
                                 default_headers={"x-portkey-api-key": GATEWAY_KEY,
                                                  "x-portkey-config": json.dumps(config)})
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert isinstance(refused.value.body, dict)
    message = refused.value.body["message"]
    assert message.startswith("Invalid config passed: targets,0,provider: Unknown provider 'opneai'")
    assert refused.value.body["errors"][0].startswith("path: targets,0,provider, message: Unknown provider")
    assert fake_provider.requests == []


def test_every_retry_of_a_fallback_is_counted(gateway: Gateway, fake_provider: FakeProvider) -> None:
    before = retries_total(gateway)
    for _ in range(3):  # the first target, tried three times
        fake_provider.enqueue(status=503, body={"error": {"message": "busy"}})
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "openai", "retry": {"attempts": 2}}, {"provider": "openai"}]}
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10, headers=headers(
        fake_provider, **{"x-portkey-config": json.dumps(config), "x-portkey-trace-id": "conf-retries"}))
    assert res.status_code == 200
    assert len(fake_provider.requests) == 4
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert res.headers["x-portkey-retry-attempt-count"] == "0"  # the answering target's own
    assert logged(gateway, "conf-retries")["retries"] == 2
    assert retries_total(gateway) - before == 2


def test_the_problem_to_fix_first_is_reported(gateway: Gateway, fake_provider: FakeProvider) -> None:
    cases = [
        ({"x-portkey-api-key": "wrong", "x-portkey-provider": "opneai"}, 401, "Invalid x-portkey-api-key"),
        ({"x-portkey-api-key": GATEWAY_KEY}, 400, "Either x-portkey-config or x-portkey-provider header is required"),
        ({"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "opneai"}, 400, "Invalid provider passed: 'opneai'"),
        ({"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai"}, 400,
         f"Invalid content type passed: '{FORM}'; send Content-Type: application/json"),
    ]
    for sent, status, message in cases:
        res = requests.post(f"{gateway.url}/v1/chat/completions", data=json.dumps(CHAT), timeout=10,
                            headers={**sent, "Content-Type": FORM})
        assert (res.status_code, res.json()["message"][:len(message)]) == (status, message)
    assert fake_provider.requests == []


def test_cohere_v2_keeps_a_custom_hosts_path_prefix(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(body={"id": "c1", "finish_reason": "COMPLETE", "usage": {},
                                "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}})
    res = requests.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                        json={"model": "command-a-03-2025", "messages": CHAT["messages"]},
                        headers=headers(fake_provider, **{"x-portkey-provider": "cohere", "x-portkey-custom-host":
                                                          f"{fake_provider.url}/proxy/cohere/v1"}))
    assert res.status_code == 200
    assert res.json()["choices"][0]["message"]["content"] == "hi"
    assert [r.path for r in fake_provider.requests] == ["/proxy/cohere/v2/chat"]


def test_messages_name_routes_not_internal_names(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/chat/completions", data="[1]", timeout=10, headers={
        **headers(fake_provider, **{"x-portkey-provider": "anthropic"}), "Content-Type": "application/json"})
    assert res.status_code == 400
    assert res.json()["message"] == ("/v1/chat/completions needs a JSON object body with Content-Type: "
                                     "application/json")
    res = requests.post(f"{gateway.url}/v1/audio/speech", json={"model": "m", "input": "hi"}, timeout=10,
                        headers=headers(fake_provider, **{"x-portkey-provider": "cohere"}))
    assert (res.status_code, res.json()["message"]) == (400, "/v1/audio/speech is not supported by cohere")


def test_an_unknown_route_gets_the_gateways_json_error(gateway: Gateway) -> None:
    for method, path in (("GET", "/v2/x"), ("POST", "/foo"), ("OPTIONS", "/v2/x")):
        res = requests.request(method, gateway.url + path, headers={"x-portkey-api-key": GATEWAY_KEY}, timeout=5)
        assert res.status_code == 404
        assert res.headers["content-type"] == "application/json"
        assert res.json()["status"] == "failure" and res.json()["message"].startswith(f"Unknown route: {path}. ")
    res = requests.head(f"{gateway.url}/v2/x", timeout=5)
    assert res.status_code == 404 and res.content == b""
