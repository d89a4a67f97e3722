"""The `key` label (docs/observability.md): the gateway key's name on requests, tokens and cost, bounded, no secrets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from app import redact
from app.call.record import CallRecord
from app.metrics import MAX_KEYS, MAX_LABEL_CHARS, MULTIPROC_ENV, NO_KEY, OTHER, GatewayMetrics, render_metrics
from app.settings import hash_key
from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET

UPSTREAM = "http://127.0.0.1:9/v1"  # a loopback custom host: the calls stay offline (mocked by `responses`)
ADMIN_KEY = "admin-metrics-keys-0123"
KEYED = ("portico_requests_total", "portico_tokens_total", "portico_cost_usd_total")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    """Return every sample of an exposition text by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def keys_of(samples: Samples, name: str) -> set[str]:
    """Return the `key` label values a sample name has."""
    return {dict(labels)["key"] for sample, labels in samples if sample == name}


def call(m: GatewayMetrics, key_name: str | None, **changes: Any) -> None:
    """Record one priced OpenAI call (10 input, 5 output tokens, $0.001) made with the key named `key_name`."""
    m.call_started()
    m.call_finished(CallRecord(**{
        "route": "unified", "provider": "openai", "status": 200, "latency_s": 0.1, "upstream_s": 0.09,
        "model": "gpt-4o-mini", "priced_as": "openai/gpt-4o-mini", "input_tokens": 10, "output_tokens": 5,
        "cost_usd": 0.001, "key_name": key_name, **changes}))


@pytest.fixture
def single(monkeypatch: pytest.MonkeyPatch) -> GatewayMetrics:
    """Return fresh single-process metrics."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return GatewayMetrics()


def test_requests_tokens_and_cost_carry_the_key_name(single: GatewayMetrics) -> None:
    call(single, "team-a")
    call(single, "team-a")
    call(single, "team-b", status=429, input_tokens=None, output_tokens=None, cost_usd=None)
    call(single, None, status=401, provider=None, input_tokens=None, output_tokens=None, cost_usd=None)
    s = parse(single.render()[0])

    def get(name: str, **labels: str) -> float | None:
        return s.get((name, frozenset(labels.items())))

    by_call = {"route": "unified", "provider": "openai"}
    assert get("portico_requests_total", **by_call, status="200", key="team-a") == 2
    assert get("portico_requests_total", **by_call, status="429", key="team-b") == 1
    # No key: the empty string, which no key name can be.
    assert NO_KEY == ""
    assert get("portico_requests_total", route="unified", provider="none", status="401", key="") == 1
    by_model = {"provider": "openai", "model": "gpt-4o-mini", "key": "team-a"}
    assert get("portico_tokens_total", **by_model, kind="input") == 20
    assert get("portico_tokens_total", **by_model, kind="output") == 10
    assert get("portico_cost_usd_total", **by_model) == pytest.approx(0.002)
    assert keys_of(s, "portico_tokens_total") == keys_of(s, "portico_cost_usd_total") == {"team-a"}
    # The other families keep their labels: latency and the rest are not split by key.
    assert get("portico_request_duration_seconds_count", **by_call) == 3  # the 401 had no provider
    keyed = {name for name, labels in s if "key" in dict(labels)}
    assert {name.removesuffix("_created").removesuffix("_total") for name in keyed} == {
        "portico_requests", "portico_tokens", "portico_cost_usd"}


def test_at_most_max_keys_names_get_their_own_series(single: GatewayMetrics) -> None:
    for index in range(MAX_KEYS + 30):
        call(single, f"key-{index:03d}")
    call(single, "key-000")  # admitted before the budget ran out: still its own series
    call(single, "key-999")  # first seen after: `other`
    call(single, None)
    s = parse(single.render()[0])

    for name in KEYED:
        got = keys_of(s, name)
        assert got == {f"key-{index:03d}" for index in range(MAX_KEYS)} | {OTHER, NO_KEY}, name
    requests = {dict(labels)["key"]: v for (name, labels), v in s.items() if name == "portico_requests_total"}
    assert requests["key-000"] == 2
    assert requests[OTHER] == 31
    assert requests[NO_KEY] == 1


def test_a_long_name_is_cut_to_the_label_limit(single: GatewayMetrics) -> None:
    name = "a-very-long-team-name-" + "x" * 200
    call(single, name)
    assert keys_of(parse(single.render()[0]), "portico_requests_total") == {name[:MAX_LABEL_CHARS]}


def test_a_name_that_holds_a_credential_is_masked(single: GatewayMetrics, monkeypatch: pytest.MonkeyPatch) -> None:
    held = "catalog-held-credential-9876"
    monkeypatch.setattr(redact, "_held", redact.Secrets([held]))  # as a gateway file's catalog key is held
    call(single, "sk-proj-abcdefghijklmnop")
    call(single, f"team {held}")
    body = single.render()[0]

    assert b"sk-proj-abcdefghijklmnop" not in body and held.encode() not in body
    assert keys_of(parse(body), "portico_requests_total") == {"sk-proj-[REDACTED]", "team [REDACTED]"}


# -- through the app -------------------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    """Yield a `responses` mock of an OpenAI-like upstream that answers with usage."""
    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        body = {"model": json.loads(request.body)["model"], "choices": [],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, f"{UPSTREAM}/chat/completions", callback=answer)
        yield mock


def test_calls_through_the_gateway_are_labelled_by_key_name_never_secret(
        app_factory: Callable[..., Flask], upstream: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    app = app_factory(admin_key_sha256=hash_key(ADMIN_KEY))
    client = app.test_client()
    created = client.post("/admin/keys", json={"name": "metrics-managed"},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert created.status_code == 201
    managed_secret = created.get_json()["key"]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for secret in (GATEWAY_KEY, managed_secret):
        res = client.post("/v1/chat/completions", json=body, headers={
            "x-portkey-api-key": secret, "x-portkey-provider": "openai", "x-portkey-custom-host": UPSTREAM,
            "Authorization": f"Bearer {PROVIDER_SECRET}"})
        assert res.status_code == 200
        res.close()  # the call is recorded when its body is done
    text = render_metrics()[0]
    s = parse(text)

    keys = keys_of(s, "portico_requests_total")
    assert {"team-a", "metrics-managed"} <= keys
    assert {"team-a", "metrics-managed"} <= keys_of(s, "portico_tokens_total")
    for secret in (GATEWAY_KEY, managed_secret, PROVIDER_SECRET, ADMIN_KEY):
        assert secret.encode() not in text
        assert hashlib.sha256(secret.encode()).hexdigest().encode() not in text
