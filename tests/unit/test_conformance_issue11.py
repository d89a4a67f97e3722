"""Conformance fixes of issue 11: option index, config and provider errors, retry counts, error order, routes, docs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from responses.registries import OrderedRegistry

from app.metrics import MULTIPROC_ENV, GatewayMetrics
from app.observe import CallObserver
from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET, gw_headers

ROOT = Path(__file__).resolve().parents[2]
OPENAI = "https://api.openai.com/v1"
A = "https://a.example.com/v1"
B = "https://b.example.com/v1"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FORM = "application/x-www-form-urlencoded"  # what `curl -d` sends when no Content-Type is given


@pytest.fixture
def app(app_factory: Any) -> Flask:
    """Return an app whose host policy resolves every host to a public address (no DNS in tests)."""
    app = app_factory()
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]
    return app


@pytest.fixture
def upstream():
    """Yield an ordered `responses` mock: calls come in the registered order, and all must come."""
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as mock:
        yield mock


def with_key(**extra: str) -> dict[str, str]:
    return {**gw_headers(**extra), "Authorization": f"Bearer {PROVIDER_SECRET}"}


def config(value: dict[str, Any]) -> dict[str, str]:
    return with_key(x_portkey_config=json.dumps(value))


# --------------------------------------------------------------------------- option index (SPEC 10)


def test_a_header_only_provider_reports_option_index_config(client: FlaskClient, upstream) -> None:
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x", "choices": []})
    res = client.post("/v1/chat/completions", json=CHAT, headers=with_key(x_portkey_provider="openai"))
    assert res.status_code == 200
    assert res.headers["x-portkey-last-used-option-index"] == "config"


# --------------------------------------------------------------------------- provider and config errors


def test_an_unknown_provider_in_a_config_is_a_schema_error_naming_its_path(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json=CHAT, headers=config(
        {"strategy": {"mode": "fallback"}, "targets": [{"provider": "opneai"}, {"provider": "openai"}]}))
    assert res.status_code == 400
    body = res.get_json()
    assert body["message"].startswith("Invalid config passed")
    assert len(body["errors"]) == 1 and body["errors"][0].startswith("path: targets,0,provider, message: ")
    assert "'opneai'" in body["errors"][0] and "openai" in body["errors"][0]  # the value, and what was meant
    # The openai SDK shows only the message: it names the place and the value too.
    assert "targets,0,provider" in body["message"] and "'opneai'" in body["message"]


def test_an_unknown_catalog_entry_in_a_config_names_its_path(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json=CHAT, headers=config(
        {"strategy": {"mode": "fallback"}, "targets": [{"provider": "@nope"}, {"provider": "openai"}]}))
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert "'@nope'" in message and "targets,0,provider" in message and "[catalog.nope]" in message


def test_the_message_names_the_unknown_provider(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json=CHAT, headers=with_key(x_portkey_provider="opneai"))
    assert res.status_code == 400
    body = res.get_json()
    assert body["message"].startswith("Invalid provider passed: 'opneai'")
    assert "openai" in body["message"].removeprefix("Invalid provider passed: 'opneai'")  # did you mean
    assert body["errors"]
    for headers in (with_key(x_portkey_provider="x" * 5000), config({"provider": "x" * 5000})):
        res = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert res.status_code == 400 and "'xxxx" in res.get_json()["message"]
        assert len(res.get_json()["message"]) < 400  # the echo is bounded


def test_custom_host_and_content_type_messages_name_the_problem(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json=CHAT,
                      headers=with_key(x_portkey_provider="openai", x_portkey_custom_host="ftp://h.example/v1"))
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert message.startswith("Invalid custom host: ") and "http or https" in message
    assert res.get_json()["errors"]
    res = client.post("/v1/chat/completions", data="{}",
                      headers={**with_key(x_portkey_provider="openai"), "Content-Type": FORM})
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert message.startswith("Invalid content type passed: ") and FORM in message
    assert "application/json" in message and res.get_json()["errors"]
    huge = "x" * 5000
    for headers in ({**with_key(x_portkey_provider="openai"), "Content-Type": f"text/{huge}"},
                    with_key(x_portkey_provider="openai", x_portkey_custom_host=f"https://[{huge}]/v1")):
        res = client.post("/v1/chat/completions", data="{}", headers={"Content-Type": "application/json", **headers})
        assert res.status_code == 400 and "xxxx" in res.get_json()["message"]
        assert len(res.get_json()["message"]) < 400  # the echo is bounded


@pytest.mark.parametrize(("path", "provider", "route"), [
    ("/v1/chat/completions", "anthropic", "/v1/chat/completions"),
    ("/v1/embeddings", "cohere", "/v1/embeddings"),
    ("/v1/messages", "openai", "/v1/messages"),
])
def test_a_non_object_body_names_the_route_not_an_internal_name(client: FlaskClient, path: str, provider: str,
                                                                 route: str) -> None:
    res = client.post(path, data="[1]", headers={**with_key(x_portkey_provider=provider),
                                                 "Content-Type": "application/json"})
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert message.startswith(f"{route} needs a JSON object body")
    assert not re.search(r"chatComplete|\bembed\b", message)


def test_an_endpoint_a_provider_does_not_offer_is_named_by_its_route(client: FlaskClient) -> None:
    res = client.post("/v1/audio/speech", json={"model": "m", "input": "hi"},
                      headers=with_key(x_portkey_provider="cohere"))
    assert res.status_code == 400
    assert res.get_json()["message"] == "/v1/audio/speech is not supported by cohere"


# --------------------------------------------------------------------------- retries are counted


class Captured:
    """A request log that keeps its records in memory."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def record(self, rec: Any) -> None:
        self.records.append(rec)

    def close(self) -> None:
        pass


def retries_total(metrics: GatewayMetrics) -> float:
    metrics.flush()
    return sum(s.value for family in text_string_to_metric_families(metrics.render()[0].decode())
               for s in family.samples if s.name == "portico_retries_total")


@pytest.fixture
def observed(app: Flask, monkeypatch: pytest.MonkeyPatch) -> tuple[Captured, GatewayMetrics]:
    """Give the app's observer an in-memory request log and fresh single-process metrics."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    gateway = app.extensions["portico"]
    log, metrics = Captured(), GatewayMetrics()
    observer = CallObserver(gateway.observer.pricing, log, metrics, access_lines=False)  # type: ignore[arg-type]
    monkeypatch.setattr(gateway, "observer", observer)
    return log, metrics


def test_every_retry_of_every_fallback_target_is_counted(client: FlaskClient, upstream, observed) -> None:
    log, metrics = observed
    for _ in range(3):
        upstream.post(f"{A}/rerank", json={"error": "busy"}, status=503)
    upstream.post(f"{B}/rerank", json={"results": []})
    res = client.post("/v1/rerank", json={"model": "m", "query": "q"}, headers=config({
        "strategy": {"mode": "fallback"},
        "targets": [{"provider": "cohere", "custom_host": A, "retry": {"attempts": 2}},
                    {"provider": "cohere", "custom_host": B}]}))
    assert res.status_code == 200
    res.close()
    assert res.headers["x-portkey-retry-attempt-count"] == "0"  # the answering target's own retries (SPEC 10)
    assert [rec.retries for rec in log.records] == [2]
    assert retries_total(metrics) == 2


def test_retries_are_counted_when_every_target_ran_out(client: FlaskClient, upstream, observed) -> None:
    log, metrics = observed
    for host in (A, A, B, B):
        upstream.post(f"{host}/rerank", json={"error": "busy"}, status=503)
    res = client.post("/v1/rerank", json={"model": "m", "query": "q"}, headers=config({
        "strategy": {"mode": "fallback"}, "retry": {"attempts": 1},
        "targets": [{"provider": "cohere", "custom_host": A}, {"provider": "cohere", "custom_host": B}]}))
    assert res.status_code == 503
    res.close()
    assert res.headers["x-portkey-retry-attempt-count"] == "-1"
    assert [rec.retries for rec in log.records] == [2]
    assert retries_total(metrics) == 2


# --------------------------------------------------------------------------- what to fix first


FIRST_PROBLEM = [
    ({"x-portkey-api-key": "wrong", "x-portkey-provider": "opneai"}, 401, "Invalid x-portkey-api-key"),
    ({"x-portkey-config": "{not json"}, 401, "Missing x-portkey-api-key"),
    (gw_headers(), 400, "Either x-portkey-config or x-portkey-provider header is required"),
    (gw_headers(x_portkey_provider="opneai"), 400, "Invalid provider passed: 'opneai'"),
    (gw_headers(x_portkey_provider="@nope"), 400, "Unknown Model Catalog entry '@nope'"),
    (gw_headers(x_portkey_config='{"provider": "opneai"}'), 400, "Invalid config passed"),
    (gw_headers(x_portkey_config="{not json"), 400, "Invalid config passed. You need to pass a valid json"),
    (gw_headers(x_portkey_provider="openai"), 400, "Invalid content type passed"),
]


def test_the_problem_to_fix_first_is_reported(client: FlaskClient) -> None:
    """Key, then provider and config, then content type (docs/decisions.md)."""
    for headers, status, message in FIRST_PROBLEM:
        # curl -d without -H 'Content-Type: application/json' sends a form content type.
        res = client.post("/v1/chat/completions", data=json.dumps(CHAT), headers={**headers, "Content-Type": FORM})
        assert (res.status_code, res.get_json()["message"][:len(message)]) == (status, message), headers


def test_no_provider_anywhere_in_a_config_is_reported_before_the_content_type(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", data="{}",
                      headers={**gw_headers(x_portkey_config='{"retry": {"attempts": 1}}'), "Content-Type": FORM})
    assert res.status_code == 400
    assert res.get_json()["message"].startswith("Either x-portkey-provider needs to be passed")


# --------------------------------------------------------------------------- Cohere v2 behind a custom host


@pytest.mark.parametrize(("custom_host", "url"), [
    ("https://h.example/proxy/cohere/v1", "https://h.example/proxy/cohere/v2/chat"),
    ("https://h.example/proxy/cohere/v1/", "https://h.example/proxy/cohere/v2/chat"),
    ("https://h.example/proxy/cohere", "https://h.example/proxy/cohere/v2/chat"),
])
def test_cohere_v2_keeps_a_custom_hosts_path_prefix(client: FlaskClient, upstream, custom_host: str,
                                                    url: str) -> None:
    upstream.post(url, json={"id": "c1", "finish_reason": "COMPLETE", "usage": {},
                             "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}})
    res = client.post("/v1/chat/completions", json={"model": "command-a", "messages": CHAT["messages"]},
                      headers=with_key(x_portkey_provider="cohere", x_portkey_custom_host=custom_host))
    assert res.status_code == 200, res.get_data()
    assert res.get_json()["choices"][0]["message"]["content"] == "hi"


def test_cohere_embed_keeps_a_custom_hosts_path_prefix(client: FlaskClient, upstream) -> None:
    upstream.post("https://h.example/cohere/v2/embed", json={"id": "e1", "embeddings": {"float": [[0.5]]},
                                                             "meta": {"billed_units": {"input_tokens": 1}}})
    res = client.post("/v1/embeddings", json={"model": "embed-v4.0", "input": "hi"},
                      headers=with_key(x_portkey_provider="cohere", x_portkey_custom_host="https://h.example/cohere/v1"))
    assert res.status_code == 200, res.get_data()


# --------------------------------------------------------------------------- unknown routes


@pytest.mark.parametrize(("method", "path"), [("GET", "/v2/x"), ("POST", "/foo"), ("OPTIONS", "/v2/x"),
                                              ("DELETE", "/v2/chat/completions")])
def test_an_unknown_route_gets_the_gateways_json_error_naming_the_path(client: FlaskClient, method: str,
                                                                       path: str) -> None:
    res = client.open(path, method=method, headers=gw_headers())
    assert res.status_code == 404
    assert res.mimetype == "application/json"
    body = res.get_json()
    assert body["status"] == "failure"
    assert body["message"].startswith(f"Unknown route: {path}")


def test_an_unknown_route_echo_is_bounded_and_head_has_no_body(client: FlaskClient) -> None:
    res = client.get("/v2/" + "a" * 5000)
    assert res.status_code == 404 and res.get_json()["message"].startswith("Unknown route: /v2/aaaa")
    assert len(res.get_json()["message"]) < 400
    res = client.head("/v2/x", headers=gw_headers())
    assert res.status_code == 404 and res.get_data() == b""


# --------------------------------------------------------------------------- docs


def _calls(markdown: str, section: str) -> list[str]:
    """Return the curl commands of a README section, continuation lines joined."""
    text = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def test_readme_curl_examples_with_a_json_body_say_so() -> None:
    calls = _calls((ROOT / "README.md").read_text(), "Calling it")
    with_body = [call for call in calls if " -d " in call]
    assert len(with_body) >= 5
    for call in with_body:
        assert re.search(r"Content-Type: application/json", call, re.IGNORECASE), call


def test_the_readme_config_example_works_with_its_own_headers(client: FlaskClient, upstream) -> None:
    """The README's config call, with its own headers (catalog names swapped for a slug the test can mock)."""
    line = next(call for call in _calls((ROOT / "README.md").read_text(), "Calling it") if "x-portkey-config" in call)
    words = shlex.split(line)
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    sent = json.loads(headers["x-portkey-config"])
    for target in sent["targets"]:
        target["provider"] = "openai"
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x", "choices": []})
    res = client.post("/v1/chat/completions", data=json.dumps(CHAT), headers={
        **headers, "x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(sent),
        "Authorization": f"Bearer {PROVIDER_SECRET}"})
    assert res.status_code == 200, res.get_data()


def test_the_anthropic_sdk_example_leaves_v1_to_the_sdk_and_healthz_is_documented() -> None:
    readme, providers = (ROOT / "README.md").read_text(), (ROOT / "docs" / "providers.md").read_text()
    for text in (readme, providers):
        base_urls = re.findall(r'Anthropic\(base_url="([^"]+)"', text)
        assert base_urls and all(not url.rstrip("/").endswith("/v1") for url in base_urls)
    told = [p for p in readme.split("\n\n") if "/healthz" in p and "upstream" in p and "key" in p]
    assert told, "README says what /healthz answers, that it never calls an upstream and needs no key"
