"""Enforcement of a key's policy, through the app (docs/governance.md): allow-lists, limits, budgets, one token.

Static keys of the gateway file take the same fields as managed ones; these tests use them, so each app is
built from settings alone. The admin API's managed keys are tested in test_admin_keys.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from app.governance.keys import read_fields
from app.settings import CatalogEntry, GatewayKey, hash_key
from tests.fakes.provider import FakeProvider

KEY = "pk-governed-key-0001"
CATALOG_SECRET = "sk-catalog-held-0002"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def governed_app(app_factory: Callable[..., Flask], fake: FakeProvider, **fields: Any) -> Flask:
    """Return an app with one static key carrying `fields` and a catalog entry on the fake provider."""
    key = GatewayKey("gov-team", hash_key(KEY), fields=read_fields(fields, partial=True))
    catalog = {"openai-fake": CatalogEntry("openai-fake", "openai", api_key=CATALOG_SECRET,
                                           custom_host=f"{fake.url}/v1", models=("gpt-4o-mini", "gpt-4o"))}
    return app_factory(keys=(key,), catalog=catalog,
                       pricing={"openai/gpt-4o-mini": {"input": 1000.0, "output": 1000.0}})


def chat(app: Flask, body: dict[str, Any] | None = None, **headers: str):
    """Call chat completions through the catalog entry with the governed key; the call ends (is recorded)."""
    sent = {"x-portkey-api-key": KEY, "x-portkey-provider": "@openai-fake",
            **{name.replace("_", "-"): value for name, value in headers.items()}}
    res = app.test_client().post("/v1/chat/completions", json=body or CHAT, headers=sent)
    res.get_data()
    res.close()  # what gunicorn does once the answer is sent: the call is recorded and counted
    return res


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until check() holds: finished calls reach the state store on a background thread."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_allow_list_admits_matching_models_and_refuses_others(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, models=["openai/gpt-4o-mini"])
    assert chat(app).status_code == 200
    refused = chat(app, {**CHAT, "model": "gpt-4o"})
    assert refused.status_code == 403
    body = refused.get_json()
    assert body["code"] == "model_not_allowed" and body["status"] == "failure"
    assert "gpt-4o" in body["message"] and "gov-team" in body["message"]
    assert len(fake_provider.requests) == 1  # the refused call never went upstream


def test_catalog_pattern_matches_the_entry_name(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, models=["@openai-fake/*"])
    assert chat(app, {**CHAT, "model": "anything"}).status_code == 200
    other = chat(app, x_portkey_provider="openai", Authorization="Bearer sk-own")
    assert other.status_code == 403


def test_rpm_refuses_with_retry_after_and_ratelimit_headers(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, limits={"rpm": 2})
    first = chat(app)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(app).headers["x-ratelimit-remaining-requests"] == "0"
    refused = chat(app)
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limit_exceeded"
    assert "rpm" in refused.get_json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_provider.requests) == 2


def test_tpm_counts_the_tokens_calls_used(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, limits={"tpm": 5})
    first = chat(app)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "5"
    gov = app.extensions["portico"].governance
    wait_for(lambda: gov.store.usage("static:gov-team", time.time(), None).tokens > 5)
    refused = chat(app)
    assert refused.status_code == 429 and "tpm" in refused.get_json()["message"]


def test_budget_refuses_once_spent(app_factory, fake_provider) -> None:
    # 1000 USD per million tokens: a few tokens cost cents, far over a budget of a tenth of a cent.
    app = governed_app(app_factory, fake_provider, budget={"usd": 0.001, "period": "day"})
    assert chat(app, {**CHAT, "max_tokens": 0}).status_code == 200
    gov = app.extensions["portico"].governance
    day = time.strftime("%Y-%m-%d", time.gmtime())
    wait_for(lambda: gov.store.usage("static:gov-team", time.time(), day).spent_usd > 0.001)
    refused = chat(app)
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "budget_exceeded"
    usage = gov.store.usage("static:gov-team", time.time(), day)
    assert usage.reserved_usd == pytest.approx(0.0)  # the first call's reservation was released


def test_zero_budget_refuses_before_upstream(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, budget={"usd": 0, "period": "total"})
    assert chat(app).get_json()["code"] == "budget_exceeded"
    assert fake_provider.requests == []


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
def test_single_token_clients_use_the_gateway_key_and_never_forward_it(app_factory, fake_provider,
                                                                       header: str) -> None:
    app = governed_app(app_factory, fake_provider)
    value = f"Bearer {KEY}" if header == "Authorization" else KEY
    res = app.test_client().post("/v1/chat/completions", json={**CHAT, "model": "@openai-fake/gpt-4o-mini"},
                                 headers={header: value, "x-portkey-forward-headers": header.lower()})
    assert res.status_code == 200, res.get_json()
    sent = fake_provider.requests[0].headers
    assert sent["authorization"] == f"Bearer {CATALOG_SECRET}"
    assert KEY not in " ".join(sent.values())


def test_default_config_serves_a_call_that_names_no_provider(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, default_config={"provider": "@openai-fake"})
    res = app.test_client().post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 200, res.get_json()
    assert fake_provider.requests[0].headers["authorization"] == f"Bearer {CATALOG_SECRET}"


def test_default_config_holds_its_credential_on_the_gateway(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, default_config={"provider": "@openai-fake"})
    res = app.test_client().post("/v1/chat/completions", json=CHAT, headers={
        "Authorization": f"Bearer {KEY}", "x-portkey-custom-host": "http://127.0.0.1:9/v1"})
    assert res.status_code == 400
    assert fake_provider.requests == []


def test_key_metadata_wins_over_the_clients(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, metadata={"team": "billing"})
    seen: list[dict[str, Any]] = []
    app.extensions["portico"].observer.register(type("Probe", (), {"write": lambda self, r: seen.append(
        dict(r.metadata))})())
    assert chat(app, x_portkey_metadata='{"team": "spoofed", "user": "u1"}').status_code == 200
    assert seen == [{"team": "billing", "user": "u1"}]


@pytest.mark.parametrize(("fields", "problem"), [
    ({"revoked": True}, "revoked"),
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expired"),
])
def test_revoked_and_expired_keys_are_refused(app_factory, fake_provider, fields, problem) -> None:
    res = chat(governed_app(app_factory, fake_provider, **fields))
    assert res.status_code == 401
    assert problem in res.get_json()["message"]


def test_models_lists_the_catalog_filtered_by_the_allow_list(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider, models=["*/gpt-4o-mini"])
    res = app.test_client().get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert res.status_code == 200
    assert res.get_json() == {"object": "list", "data": [
        {"id": "@openai-fake/gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}]}
    assert app.test_client().get("/v1/models").status_code == 401


def test_models_with_a_provider_is_proxied(app_factory, fake_provider) -> None:
    app = governed_app(app_factory, fake_provider)
    res = app.test_client().get("/v1/models", headers={"x-portkey-api-key": KEY,
                                                       "x-portkey-provider": "@openai-fake"})
    assert res.status_code == 200
    assert fake_provider.requests[0].path == "/v1/models"


def test_unlimited_keys_carry_no_ratelimit_headers(app_factory, fake_provider) -> None:
    res = chat(governed_app(app_factory, fake_provider))
    assert res.status_code == 200
    assert not any(name.lower().startswith("x-ratelimit-") for name in res.headers.keys())


def test_a_gateway_key_sent_as_bearer_never_reaches_the_access_line(app_factory, fake_provider, capsys) -> None:
    from app.logs import access_lines

    app = governed_app(app_factory, fake_provider)
    res = app.test_client().post("/v1/chat/completions", json={**CHAT, "model": "@openai-fake/gpt-4o-mini"},
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "x-portkey-metadata": f'{{"note": "{KEY}"}}'})
    res.get_data()
    res.close()
    access_lines.flush()
    out = capsys.readouterr().out
    assert '"key":"gov-team"' in out
    assert KEY not in out and hash_key(KEY) not in out


def test_conditional_routing_sees_the_keys_metadata(app_factory, fake_provider) -> None:
    config = {"strategy": {"mode": "conditional", "default": "cheap",
                           "conditions": [{"query": {"metadata.tier": {"$eq": "gold"}}, "then": "best"}]},
              "targets": [{"name": "cheap", "provider": "@openai-fake", "override_params": {"model": "gpt-4o-mini"}},
                          {"name": "best", "provider": "@openai-fake", "override_params": {"model": "gpt-4o"}}]}
    gold = governed_app(app_factory, fake_provider, metadata={"tier": "gold"}, default_config=config)
    res = gold.test_client().post("/v1/chat/completions", json=CHAT, headers={
        "Authorization": f"Bearer {KEY}", "x-portkey-metadata": '{"tier": "free"}'})
    assert res.status_code == 200, res.get_json()
    assert fake_provider.requests[-1].json()["model"] == "gpt-4o"  # the key's tier, not the client's
