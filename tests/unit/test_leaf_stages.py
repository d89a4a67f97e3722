"""The leaf stages (app/pipeline/leaf.py): one ordered list, each stage a function of the call and the rest."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import pytest
import responses
from flask.testing import FlaskClient

from app.config.models import RetryPolicy
from app.pipeline import leaf
from app.pipeline.backoff import Retry
from tests.conftest import PROVIDER_SECRET, gw_headers

A = "https://a.example.com/v1"


@pytest.fixture
def client(app_factory) -> FlaskClient:
    """Return a client whose custom-host policy resolves the test host to a public address."""
    app = app_factory()
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]
    return app.test_client()


def call(client: FlaskClient, config: dict):
    return client.post("/v1/rerank", json={"model": "m", "query": "q"},
                       headers={**gw_headers(x_portkey_config=json.dumps(config)),
                                "Authorization": f"Bearer {PROVIDER_SECRET}"})


def test_the_stages_run_in_the_documented_order() -> None:
    assert [stage.__name__ for stage in leaf.LEAF_STAGES] == ["govern", "guardrails", "translate", "cache", "retry"]


def test_a_stage_added_to_the_list_sees_every_attempt_and_its_outcome(client: FlaskClient, monkeypatch) -> None:
    seen: list[tuple[str, int]] = []

    def audit(env: leaf.LeafEnv, leaf_call: leaf.LeafCall, rest: leaf.Rest) -> leaf.Outcome:
        outcome = rest(leaf_call)
        seen.append((leaf_call.path, outcome.status))
        return outcome

    # After retry: one entry per attempt, in the order they were made.
    monkeypatch.setattr(leaf, "LEAF_STAGES", (*leaf.LEAF_STAGES, audit))
    with responses.RequestsMock() as mock:
        mock.post(f"{A}/rerank", json={}, status=503)
        mock.post(f"{A}/rerank", json={"results": []}, status=200)
        res = call(client, {"provider": "cohere", "custom_host": A, "retry": {"attempts": 2}})
    assert res.status_code == 200
    assert seen == [("config", 503), ("config", 200)]


def test_a_stage_that_answers_itself_sends_nothing_upstream(client: FlaskClient, monkeypatch) -> None:
    from app.call.answer import Answer

    def refuse(env: leaf.LeafEnv, leaf_call: leaf.LeafCall, rest: leaf.Rest) -> leaf.Outcome:
        return leaf.Outcome(leaf_call.path, leaf_call.target, answer=Answer.whole(429, b"{}", []))

    monkeypatch.setattr(leaf, "LEAF_STAGES", (refuse, *leaf.LEAF_STAGES))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(f"{A}/rerank", json={"results": []}, status=200)
        res = call(client, {"provider": "cohere", "custom_host": A})
        assert len(mock.calls) == 0
    assert res.status_code == 429


def test_retry_state_is_a_value_and_the_minus_one_is_computed() -> None:
    state = Retry(RetryPolicy(attempts=2), base_ms=0, started=0.0)
    with pytest.raises(FrozenInstanceError):
        state.count = 1  # type: ignore[misc]
    after = state.increment().increment()
    assert (state.count, after.count, after.reported) == (0, 2, 2)
    assert after.wait(503, None, now=0.0) is None  # no attempt left
    assert after.give_up().reported == -1
    assert Retry(RetryPolicy(attempts=0), 0, 0.0).give_up().reported == 0  # no retries configured: 0, not -1
    assert state.wants(503) and not state.wants(200)


def test_a_leaf_builds_its_upstream_request_once_for_the_cache_key_and_every_attempt(client: FlaskClient,
                                                                                      monkeypatch) -> None:
    from app.pipeline import upstream

    built: list[upstream.UpstreamRequest] = []
    sent: list[upstream.UpstreamRequest] = []
    keyed: list[upstream.UpstreamRequest] = []
    real_build, real_send = upstream.build, upstream.send
    gateway = client.application.extensions["portico"]
    real_key = gateway.cache_key

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    def send(ctx, target, request, *rest):
        sent.append(request)
        return real_send(ctx, target, request, *rest)

    def key(ctx, target, request):
        keyed.append(request)
        return real_key(ctx, target, request)

    monkeypatch.setattr(upstream, "build", build)
    monkeypatch.setattr(upstream, "send", send)
    monkeypatch.setattr(gateway, "extras", replace(gateway.extras, cache_key=key))
    with responses.RequestsMock() as mock:
        mock.post(f"{A}/rerank", json={}, status=503)
        mock.post(f"{A}/rerank", json={}, status=503)
        mock.post(f"{A}/rerank", json={"results": []}, status=200)
        res = call(client, {"provider": "cohere", "custom_host": A, "retry": {"attempts": 2},
                            "cache": {"mode": "simple"}})
    assert res.status_code == 200
    assert len(built) == 1 and built[0].url == f"{A}/rerank"
    assert sent == built * 3 and keyed == built
