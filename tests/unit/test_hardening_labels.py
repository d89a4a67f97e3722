"""Metric labels come from bounded sets (docs/security.md): client-chosen values cannot add series without end."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator

import pytest
import responses
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app.call.record import CallRecord
from app.metrics import MAX_MODEL_PAIRS, MAX_PROVIDERS, MULTIPROC_ENV, GatewayMetrics, render_metrics
from tests.conftest import PROVIDER_SECRET, gw_headers

UPSTREAM = "http://127.0.0.1:9/v1"  # a loopback custom host: no name to resolve (the calls stay offline)
MODEL_FAMILIES = ("portico_tokens_total", "portico_cost_usd_total")
# Statuses an upstream (a custom host) may answer: common codes keep their own series, odd ones fold into classes.
STATUSES = (200, 201, 429, 500, 503, 150, 207, 418, 451, 599, 700, 999)


def random_text(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-_./:", k=size))


def series(body: bytes) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Return every series (sample name and labels) of an exposition text."""
    return {(s.name, frozenset(s.labels.items()))
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


@pytest.fixture
def single(monkeypatch: pytest.MonkeyPatch) -> GatewayMetrics:
    """Return fresh single-process metrics."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    return GatewayMetrics()


def record_random_calls(m: GatewayMetrics, rng: random.Random, calls: int) -> None:
    """Record calls whose model and cache status are random text, and statuses odd ones too."""
    for _ in range(calls):
        m.call_started()
        provider, model = rng.choice(["openai", "anthropic", "cohere"]), random_text(rng)
        m.call_finished(CallRecord(route=rng.choice(["unified", "proxy"]), provider=provider,
                                   status=rng.choice(STATUSES), latency_s=rng.random(), upstream_s=rng.random() / 2,
                                   retries=rng.randint(0, 2), fell_back=rng.random() < 0.1,
                                   cache_status=rng.choice([None, "HIT", "MISS", random_text(rng)]), model=model,
                                   priced_as=f"{provider}/{model}", input_tokens=5, output_tokens=3, cost_usd=0.001))


def test_random_client_values_stop_adding_series(single: GatewayMetrics) -> None:
    rng = random.Random(14)
    record_random_calls(single, rng, 3000)
    body = single.render()[0]
    after_3000 = series(body)
    record_random_calls(single, rng, 3000)
    body_6000 = single.render()[0]

    assert series(body_6000) == after_3000  # saturated: 3,000 more random calls add no series at all
    assert len(body_6000) < len(body) * 1.02  # and /metrics stays the same size (only the counts grew)
    models = {dict(labels).get("model") for name, labels in after_3000 if name in MODEL_FAMILIES}
    assert len(models) <= MAX_MODEL_PAIRS + 1 and "other" in models
    statuses = {dict(labels)["status"] for name, labels in after_3000 if name == "portico_requests_total"}
    assert statuses == {"200", "201", "429", "500", "503", "1xx", "2xx", "4xx", "5xx", "other"}
    kinds = {dict(labels)["kind"] for name, labels in after_3000 if name == "portico_tokens_total"}
    assert kinds == {"input", "output"}


def test_unknown_providers_beyond_the_budget_count_as_other(single: GatewayMetrics) -> None:
    for index in range(MAX_PROVIDERS + 50):
        single.call_started()
        single.call_finished(CallRecord(route="proxy", provider=f"made-up-{index}", status=200, latency_s=0.01))
    providers = {dict(labels)["provider"] for name, labels in series(single.render()[0])
                 if name == "portico_requests_total"}
    assert len(providers) == MAX_PROVIDERS + 1 and "other" in providers


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    """Yield a `responses` mock of an OpenAI-like upstream that echoes the model it was asked for, with usage."""
    def answer(request):  # type: ignore[no-untyped-def]
        model = json.loads(request.body)["model"]
        body = {"model": model, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, f"{UPSTREAM}/chat/completions", callback=answer)
        yield mock


def call(client: FlaskClient, model: str) -> None:
    res = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                      headers=gw_headers(x_portkey_provider="openai", x_portkey_custom_host=UPSTREAM,
                                         Authorization=f"Bearer {PROVIDER_SECRET}"))
    assert res.status_code == 200
    res.close()  # the call is recorded when its body is done


def test_models_through_the_gateway_are_price_table_names_or_other(client: FlaskClient, upstream) -> None:
    rng = random.Random(5)
    call(client, "gpt-4o-mini-2024-07-18")  # priced as gpt-4o-mini
    call(client, random_text(rng))
    before = series(render_metrics()[0])
    for _ in range(200):
        call(client, random_text(rng, 24))
    after = series(render_metrics()[0])

    assert after == before  # 200 calls with random models: not one series more
    labels = {dict(labels).get("model") for name, labels in after if name in MODEL_FAMILIES}
    assert {"gpt-4o-mini", "other"} <= labels
    assert "gpt-4o-mini-2024-07-18" not in labels
