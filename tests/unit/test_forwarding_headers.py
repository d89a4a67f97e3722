"""A reverse proxy's headers about the client never reach a provider; open mode refuses calls through a proxy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import PROVIDER_SECRET, gw_headers

OPENAI = "https://api.openai.com/v1"
ANTHROPIC = "https://api.anthropic.com/v1"
COHERE = "https://api.cohere.ai/v1"
CHAT = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
OPENAI_ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hey"},
                              "finish_reason": "stop"}]}
ANTHROPIC_ANSWER = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
                    "content": [{"type": "text", "text": "hey"}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1}}
# What nginx, a load balancer or a CDN adds about the client and the network on the way in.
FORWARDING = {
    "Forwarded": 'for="[2001:db8::1]:4711";proto=https;by=10.0.0.1',
    "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "gateway.internal.example",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/ai",
    "X-Forwarded-Server": "edge-3.internal",
    "x-forwarded-ssl": "on",
    "X-Real-IP": "203.0.113.7",
}


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    """Yield a strict `responses` mock: an unfired registration fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


# (name, method, path, provider, upstream URL, upstream answer, request body)
ROUTES: list[tuple[str, str, str, str, str, dict[str, Any], Any]] = [
    ("proxy", "POST", "/v1/rerank", "cohere", f"{COHERE}/rerank", {"results": []}, {"query": "q"}),
    ("proxy GET", "GET", "/v1/models", "openai", f"{OPENAI}/models", {"data": []}, None),
    ("legacy proxy", "POST", "/v1/proxy/rerank", "cohere", f"{COHERE}/rerank", {"results": []}, {"query": "q"}),
    ("unified", "POST", "/v1/chat/completions", "openai", f"{OPENAI}/chat/completions", OPENAI_ANSWER, CHAT),
    ("unified translated", "POST", "/v1/chat/completions", "anthropic", f"{ANTHROPIC}/messages",
     ANTHROPIC_ANSWER, CHAT),
    ("messages front", "POST", "/v1/messages", "openai", f"{OPENAI}/chat/completions", OPENAI_ANSWER, CHAT),
    ("embeddings", "POST", "/v1/embeddings", "openai", f"{OPENAI}/embeddings", {"data": []},
     {"model": "e", "input": "x"}),
]


def sent_names(mock: responses.RequestsMock) -> set[str]:
    """Return the lower-case header names of the one request the provider received."""
    assert len(mock.calls) == 1
    return {name.lower() for name in mock.calls[0].request.headers}


def test_no_forwarding_header_reaches_the_provider_on_any_route(client: FlaskClient, upstream) -> None:
    for name, method, path, provider, url, answer, body in ROUTES:
        upstream.add(method, url, json=answer)
        headers = {**gw_headers(x_portkey_provider=provider), "Authorization": f"Bearer {PROVIDER_SECRET}",
                   **FORWARDING, "X-Kept": "1"}
        if provider == "anthropic":
            headers["x-api-key"] = PROVIDER_SECRET
        res = client.open(path, method=method, json=body, headers=headers)
        assert res.status_code == 200, (name, res.get_data(as_text=True))  # keys configured: served as usual
        sent = {header.lower() for header in upstream.calls[-1].request.headers}
        leaked = {h for h in sent if h in ("forwarded", "x-real-ip") or h.startswith("x-forwarded-")}
        assert not leaked, name
        if name.startswith(("proxy", "legacy")):
            assert "x-kept" in sent, name  # the proxy still forwards the client's other headers
    assert len(upstream.calls) == len(ROUTES)


def test_a_forwarding_header_is_dropped_even_in_a_proxy_ignore_list_of_its_own(app_factory: Callable[..., Flask],
                                                                               upstream) -> None:
    # The built-in refusal does not depend on [proxy] ignore_headers.
    client = app_factory(ignore_headers=frozenset({"x-other"})).test_client()
    upstream.post(f"{COHERE}/rerank", json={})
    res = client.post("/v1/rerank", json={}, headers={**gw_headers(x_portkey_provider="cohere"),
                                                      "Authorization": "Bearer k", "X-Forwarded-For": "10.0.0.9"})
    assert res.status_code == 200
    assert "x-forwarded-for" not in sent_names(upstream)


@pytest.mark.parametrize("named", ["x-forwarded-for", "X-Forwarded-Proto", "forwarded", "x-real-ip",
                                   "x-forwarded-anything"])
def test_the_forward_list_may_not_name_a_forwarding_header(client: FlaskClient, named: str) -> None:
    headers = {**gw_headers(x_portkey_provider="openai"), "Authorization": "Bearer k", **FORWARDING,
               "x-portkey-forward-headers": f"x-trace, {named}"}
    res = client.post("/v1/chat/completions", json=CHAT, headers=headers)  # nothing registered: nothing sent
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert f"may not name {named.lower()}" in message and "never go to a provider" in message


def test_a_configs_forward_headers_may_not_name_one_either(client: FlaskClient) -> None:
    config = {"provider": "openai", "api_key": "k", "forward_headers": ["X-Real-IP"]}
    res = client.post("/v1/chat/completions", json=CHAT,
                      headers={**gw_headers(x_portkey_config=json.dumps(config)), **FORWARDING})
    assert res.status_code == 400
    assert "may not name x-real-ip" in res.get_json()["message"]


# -- open mode behind a proxy --------------------------------------------------------------------------------


@pytest.mark.parametrize("header, value", [("X-Forwarded-For", "203.0.113.7"), ("x-forwarded-for", ""),
                                           ("Forwarded", "for=203.0.113.7")])
def test_open_mode_refuses_a_call_through_a_proxy(app_factory: Callable[..., Flask], upstream, header: str,
                                                  value: str) -> None:
    client = app_factory(keys=()).test_client()
    upstream.post(f"{COHERE}/rerank", json={})
    # A direct local call is served as before (X-Real-IP alone is no sign of a proxy in front).
    direct = client.post("/v1/rerank", json={}, headers={"x-portkey-provider": "cohere", "X-Real-IP": "1.2.3.4"})
    assert direct.status_code == 200
    res = client.post("/v1/rerank", json={}, headers={"x-portkey-provider": "cohere", header: value})
    assert res.status_code == 401
    message = res.get_json()["message"]
    assert "gateway keys are needed behind a proxy" in message and "[[keys]]" in message
    assert len(upstream.calls) == 1


def test_the_open_mode_start_up_warning_says_keys_are_needed_behind_a_proxy() -> None:
    from app.settings import check_start, load_settings

    warning = check_start(load_settings({"GATEWAY_BIND": "127.0.0.1:8787"}, path=None)) or ""
    assert "running OPEN" in warning
    assert "behind a reverse proxy gateway keys are needed" in warning
    assert "Forwarded or X-Forwarded-For are refused (401)" in warning
