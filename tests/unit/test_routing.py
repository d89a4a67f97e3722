"""The config engine with scripted upstreams (`responses`, ordered): retries, fallback, loadbalance, conditional."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import requests
import responses
from flask.testing import FlaskClient
from responses.registries import OrderedRegistry

from app.config.compiled import inherit
from app.config.models import Strategy, Target
from app.pipeline.routing import Router
from tests.conftest import PROVIDER_SECRET, gw_headers

A = "https://a.example.com/v1"
B = "https://b.example.com/v1"


@pytest.fixture
def script():
    """Yield an ordered `responses` mock: calls must come in the registered order, and all must come."""
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client(app_factory) -> FlaskClient:
    """Return a client whose custom-host policy resolves the test hosts to a public address."""
    app = app_factory()
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]
    return app.test_client()


def call(client: FlaskClient, config: dict, path: str = "/v1/rerank", **headers: str):
    return client.post(path, json={"model": "m", "query": "q"},
                       headers={**gw_headers(x_portkey_config=json.dumps(config)),
                                "Authorization": f"Bearer {PROVIDER_SECRET}", **headers})


def target(host: str, **extra) -> dict:
    return {"provider": "cohere", "custom_host": host, **extra}


def test_retries_until_success_and_counts_them(client: FlaskClient, script) -> None:
    for status in (503, 503, 200):
        script.post(f"{A}/rerank", json={"status": status}, status=status)
    res = call(client, target(A, retry={"attempts": 3}))
    assert res.status_code == 200
    assert res.headers["x-portkey-retry-attempt-count"] == "2"
    assert res.headers["x-portkey-last-used-option-index"] == "config"


def test_exhausted_retries_answer_the_last_status_with_minus_one(client: FlaskClient, script) -> None:
    for _ in range(3):
        script.post(f"{A}/rerank", json={"error": "busy"}, status=503)
    res = call(client, target(A, retry={"attempts": 2}))
    assert res.status_code == 503
    assert res.headers["x-portkey-retry-attempt-count"] == "-1"


def test_status_outside_the_retry_list_is_not_retried(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={}, status=400)
    res = call(client, target(A, retry={"attempts": 3}))
    assert res.status_code == 400
    assert res.headers["x-portkey-retry-attempt-count"] == "0"


def test_connection_errors_are_retried(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", body=requests.exceptions.ConnectionError("refused"))
    script.post(f"{A}/rerank", json={"ok": 1})
    res = call(client, target(A, retry={"attempts": 1}))
    assert res.status_code == 200
    assert res.headers["x-portkey-retry-attempt-count"] == "1"


def test_body_is_identical_on_every_attempt(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", status=500)
    script.post(f"{A}/rerank", status=200)
    call(client, target(A, retry={"attempts": 1}))
    assert script.calls[0].request.body == script.calls[1].request.body


def test_fallback_moves_on_from_500(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={"error": "down"}, status=500)
    script.post(f"{B}/rerank", json={"from": "b"})
    res = call(client, {"strategy": {"mode": "fallback"}, "targets": [target(A), target(B)]})
    assert res.status_code == 200 and res.get_json() == {"from": "b"}
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert res.headers["x-portkey-provider"] == "cohere"


def test_fallback_on_status_codes_narrows_it(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={"error": "bad"}, status=400)
    res = call(client, {"strategy": {"mode": "fallback", "on_status_codes": [429]},
                        "targets": [target(A), target(B)]})
    assert res.status_code == 400
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[0]"


def test_fallback_all_failing_returns_the_last_answer(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={"from": "a"}, status=500)
    script.post(f"{B}/rerank", json={"from": "b"}, status=502, headers={"x-from": "b"})
    res = call(client, {"strategy": {"mode": "fallback"}, "targets": [target(A), target(B)]})
    assert res.status_code == 502 and res.get_json() == {"from": "b"} and res.headers["x-from"] == "b"


def test_fallback_after_timeout(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", body=requests.exceptions.ReadTimeout("slow"))
    script.post(f"{B}/rerank", json={"from": "b"})
    res = call(client, {"strategy": {"mode": "fallback"}, "request_timeout": 100,
                        "targets": [target(A), target(B)]})
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


def test_nested_loadbalance_inside_fallback(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", status=503)
    script.post(f"{B}/rerank", json={"from": "b"})
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"strategy": {"mode": "loadbalance"}, "targets": [target(A, weight=1), target(B, weight=0)]},
        {"strategy": {"mode": "loadbalance"}, "targets": [target(A, weight=0), target(B, weight=1)]},
    ]}
    res = call(client, config)
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1].targets[1]"


def test_conditional_routes_on_metadata(client: FlaskClient, script) -> None:
    script.post(f"{B}/rerank", json={"from": "b"})
    config = {"strategy": {"mode": "conditional", "default": "cheap",
                           "conditions": [{"query": {"metadata.user.tier": {"$eq": "pro"}}, "then": "fast"}]},
              "targets": [target(A, name="cheap"), target(B, name="fast")]}
    meta = json.dumps({"user": {"tier": "pro"}})
    res = call(client, config, **{"x-portkey-metadata": meta})
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


def test_conditional_on_params_and_default(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={"from": "a"})
    config = {"strategy": {"mode": "conditional", "default": "cheap",
                           "conditions": [{"query": {"params.model": {"$in": ["big"]}}, "then": "fast"}]},
              "targets": [target(A, name="cheap"), target(B, name="fast")]}
    res = call(client, config)
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[0]"


def test_conditional_without_match_or_default_is_400(client: FlaskClient) -> None:
    config = {"strategy": {"mode": "conditional",
                           "conditions": [{"query": {"metadata.tier": "pro"}, "then": "fast"}]},
              "targets": [target(A, name="fast")]}
    res = call(client, config)
    assert res.status_code == 400
    assert res.get_json()["message"] == "Query router did not resolve to any valid target"


def test_override_params_merge_into_the_body(client: FlaskClient, script) -> None:
    script.post(f"{A}/rerank", json={})
    call(client, {"override_params": {"model": "root", "top_n": 2},
                  "targets": [target(A, override_params={"model": "leaf"})]})
    assert json.loads(script.calls[0].request.body) == {"model": "leaf", "query": "q", "top_n": 2}


def test_same_config_works_on_unified_route(client: FlaskClient, script) -> None:
    script.post(f"{A}/chat/completions", status=500)
    script.post(f"{B}/chat/completions", json={"id": "b"})
    config = {"strategy": {"mode": "fallback"},
              "targets": [{"provider": "openai", "custom_host": A}, {"provider": "openai", "custom_host": B}]}
    res = call(client, config, path="/v1/chat/completions")
    assert res.status_code == 200 and res.get_json() == {"id": "b"}


def test_saved_config_by_id(app_factory, script) -> None:
    from app.config.schema import parse_config
    config = parse_config({"strategy": {"mode": "fallback"}, "targets": [target(A), target(B)]})
    app = app_factory(configs={"pc-two": config})
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]
    script.post(f"{A}/rerank", status=500)
    script.post(f"{B}/rerank", json={})
    res = app.test_client().post("/v1/rerank", json={}, headers={
        **gw_headers(x_portkey_config="pc-two"), "Authorization": "Bearer x"})
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"


def test_catalog_target_in_config(client: FlaskClient, script) -> None:
    script.post("https://api.cohere.ai/v1/rerank", json={})
    res = call(client, {"targets": [{"provider": "@cohere-prod"}]})
    assert res.status_code == 200
    assert script.calls[0].request.headers["Authorization"] == "Bearer co-catalog-secret"


def test_body_model_names_a_catalog_entry(client: FlaskClient, script) -> None:
    script.post("https://api.openai.com/v1/chat/completions", json={})
    from app.settings import CatalogEntry
    client.application.extensions["portico"].settings.catalog["openai-x"] = CatalogEntry(
        name="openai-x", provider="openai", api_key="sk-x")
    res = client.post("/v1/chat/completions", json={"model": "@openai-x/gpt-4o-mini", "messages": []},
                      headers=gw_headers())
    assert res.status_code == 200
    sent = script.calls[0].request
    assert json.loads(sent.body)["model"] == "gpt-4o-mini"
    assert sent.headers["Authorization"] == "Bearer sk-x"


def test_loadbalance_follows_the_weights() -> None:
    """Chi-square over 6000 seeded picks: weights 1:2:3, and weight 0 is never picked."""
    children = tuple(Target(provider="openai", weight=w) for w in (1, 2, 3, 0))
    router = Router(ctx=None, settings=None, build=None, send=None, rng=random.Random(7))  # type: ignore[arg-type]
    counts = Counter(router._weighted(children) for _ in range(6000))
    assert counts[3] == 0
    expected = {0: 1000, 1: 2000, 2: 3000}
    chi2 = sum((counts[i] - e) ** 2 / e for i, e in expected.items())
    assert chi2 < 13.8  # p = 0.001 with 2 degrees of freedom


def test_inheritance() -> None:
    parent = Target(override_params={"a": 1, "b": 1}, request_timeout=500, custom_host="https://p",
                    forward_headers=("x-a",), strategy=Strategy(mode="fallback"))
    child = inherit(parent, Target(provider="openai", override_params={"b": 2}, custom_host="https://c"))
    assert child.override_params == {"a": 1, "b": 2}
    assert child.request_timeout == 500 and child.forward_headers == ("x-a",)
    assert child.custom_host == "https://c"
    assert child.strategy is None
