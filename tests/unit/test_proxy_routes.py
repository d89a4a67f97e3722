"""Proxy and unified routes with a mocked upstream (`responses`): URLs, headers, bodies, errors."""

from __future__ import annotations

import json

import pytest
import requests
import responses
from flask.testing import FlaskClient

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET, gw_headers

COHERE = "https://api.cohere.ai/v1"
OPENAI = "https://api.openai.com/v1"


@pytest.fixture
def upstream():
    """Yield a strict `responses` mock: an unfired registration fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def auth(provider: str = "cohere", **extra: str) -> dict[str, str]:
    return gw_headers(x_portkey_provider=provider, Authorization=f"Bearer {PROVIDER_SECRET}", **extra)


def test_rerank_post_goes_to_provider_path_with_bearer(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank?x=1", json={"results": []}, status=200)
    body = b'{"query":"q","documents":["a","b"]}'
    res = client.post("/v1/rerank?x=1", data=body, headers={**auth(), "Content-Type": "application/json"})
    assert res.status_code == 200
    sent = upstream.calls[0].request
    assert sent.url == f"{COHERE}/rerank?x=1"
    assert sent.body == body
    assert sent.headers["Authorization"] == f"Bearer {PROVIDER_SECRET}"
    assert not any(h.lower().startswith("x-portkey-") for h in sent.headers)
    assert res.headers["x-portkey-provider"] == "cohere"
    assert res.headers["x-portkey-retry-attempt-count"] == "0"
    assert res.headers["x-portkey-cache-status"] == "DISABLED"
    assert res.headers["x-portkey-trace-id"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
def test_every_proxy_method_is_forwarded_as_is(client: FlaskClient, upstream, method: str) -> None:
    upstream.add(method, f"{COHERE}/collections/my-collection", json={"ok": method}, status=201)
    res = client.open("/v1/collections/my-collection", method=method, headers=auth())
    assert res.status_code == 201
    assert res.get_json() == {"ok": method}
    assert upstream.calls[0].request.method == method


def test_query_string_is_forwarded_verbatim(client: FlaskClient, upstream) -> None:
    raw = "b=2&a=1&a=%2F&empty=&flag"
    upstream.get(f"{COHERE}/models", body="[]", match=[responses.matchers.query_string_matcher(raw)])
    res = client.get(f"/v1/models?{raw}", headers=auth())
    assert res.status_code == 200
    assert upstream.calls[0].request.url.endswith("/models?" + raw)


def test_legacy_proxy_prefix_is_stripped(client: FlaskClient, upstream) -> None:
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x"})
    res = client.post("/v1/proxy/chat/completions", json={"model": "m"}, headers=auth("openai"))
    assert res.status_code == 200
    assert upstream.calls[0].request.url == f"{OPENAI}/chat/completions"


def test_unified_route_sends_only_provider_headers(client: FlaskClient, upstream) -> None:
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x"})
    res = client.post("/v1/chat/completions", json={"model": "m"},
                      headers={**auth("openai"), "x-client-thing": "1", "Cookie": "a=b"})
    assert res.status_code == 200
    sent = upstream.calls[0].request.headers
    assert "x-client-thing" not in sent and "Cookie" not in sent
    assert sent["Authorization"] == f"Bearer {PROVIDER_SECRET}"


def test_proxy_forwards_client_headers_but_not_gateway_or_hop_by_hop(client: FlaskClient, upstream) -> None:
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x"})
    headers = {**auth("openai"), "x-client-thing": "1", "Connection": "keep-alive, x-drop-me",
               "x-drop-me": "1", "Keep-Alive": "5", "x-portkey-metadata": '{"a":"b"}'}
    res = client.post("/v1/proxy/chat/completions", json={}, headers=headers)
    assert res.status_code == 200
    sent = {k.lower(): v for k, v in upstream.calls[0].request.headers.items()}
    assert sent["x-client-thing"] == "1"
    for gone in ("x-drop-me", "keep-alive", "x-portkey-metadata", "x-portkey-api-key", "x-portkey-provider"):
        assert gone not in sent


def test_configured_ignore_list_is_never_forwarded(app_factory, upstream) -> None:
    client = app_factory(ignore_headers=frozenset({"x-internal-route"})).test_client()
    upstream.post(f"{COHERE}/rerank", json={})
    res = client.post("/v1/rerank", json={}, headers={**auth(), "X-Internal-Route": "a", "x-kept": "b"})
    assert res.status_code == 200
    sent = {k.lower() for k in upstream.calls[0].request.headers}
    assert "x-internal-route" not in sent and "x-kept" in sent


def test_forward_headers_copies_named_headers_on_unified_route(client: FlaskClient, upstream) -> None:
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "x"})
    res = client.post("/v1/chat/completions", json={},
                      headers={**auth("openai"), "x-trace": "t1", "x-other": "o",
                               "x-portkey-forward-headers": "x-trace"})
    assert res.status_code == 200
    sent = upstream.calls[0].request.headers
    assert sent["x-trace"] == "t1" and "x-other" not in sent


def test_forward_headers_may_not_name_itself(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json={},
                      headers={**auth("openai"), "x-portkey-forward-headers": "x-portkey-forward-headers"})
    assert res.status_code == 400
    assert "may not name itself" in res.get_json()["message"]


def test_unified_route_refuses_an_endpoint_the_provider_does_not_offer(client: FlaskClient) -> None:
    res = client.post("/v1/audio/speech", json={"model": "m", "input": "hi"}, headers=auth("cohere"))
    assert res.status_code == 400
    assert res.get_json() == {"status": "failure", "message": "/v1/audio/speech is not supported by cohere"}


def test_messages_route_goes_to_anthropic_with_its_auth(client: FlaskClient, upstream) -> None:
    upstream.post("https://api.anthropic.com/v1/messages", json={"type": "message"})
    res = client.post("/v1/messages", json={"max_tokens": 5, "messages": []},
                      headers=gw_headers(x_portkey_provider="anthropic", x_api_key="ak-secret"))
    assert res.status_code == 200
    sent = upstream.calls[0].request.headers
    assert sent["x-api-key"] == "ak-secret"
    assert sent["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent


def test_azure_unified_path_uses_deployment_and_api_version(client: FlaskClient, upstream) -> None:
    url = "https://res1.openai.azure.com/openai/deployments/dep1/chat/completions?api-version=2024-06-01"
    upstream.post(url, json={"id": "x"})
    res = client.post("/v1/chat/completions", json={}, headers={
        **auth("azure-openai"), "x-portkey-azure-resource-name": "res1",
        "x-portkey-azure-deployment-id": "dep1", "x-portkey-azure-api-version": "2024-06-01"})
    assert res.status_code == 200
    assert upstream.calls[0].request.headers["api-key"] == PROVIDER_SECRET


def test_azure_without_resource_name_says_which_header(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", json={}, headers=auth("azure-openai"))
    assert res.status_code == 400
    assert "x-portkey-azure-resource-name" in res.get_json()["message"]


def test_catalog_entry_supplies_credential(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", json={"results": []})
    res = client.post("/v1/rerank", json={}, headers=gw_headers(x_portkey_provider="@cohere-prod"))
    assert res.status_code == 200
    assert upstream.calls[0].request.headers["Authorization"] == "Bearer co-catalog-secret"


def test_unknown_catalog_entry_is_named(client: FlaskClient) -> None:
    res = client.post("/v1/rerank", json={}, headers=gw_headers(x_portkey_provider="@nope"))
    assert res.status_code == 400
    assert "'@nope'" in res.get_json()["message"]


def test_unknown_provider_slug(client: FlaskClient) -> None:
    res = client.post("/v1/rerank", json={}, headers=auth("not-a-provider"))
    assert res.status_code == 400
    assert res.get_json()["message"] == "Invalid provider passed: 'not-a-provider'"


def test_neither_provider_nor_config(client: FlaskClient) -> None:
    res = client.post("/v1/rerank", json={}, headers=gw_headers())
    assert res.status_code == 400
    assert res.get_json()["message"] == "Either x-portkey-config or x-portkey-provider header is required"


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"x-portkey-api-key": "wrong"}, 401),
    ({"x-portkey-api-key": GATEWAY_KEY}, 400),  # authenticated; then no provider
])
def test_gateway_key_is_required(client: FlaskClient, headers: dict[str, str], status: int) -> None:
    res = client.post("/v1/rerank", json={}, headers=headers)
    assert res.status_code == status
    assert res.is_json and res.get_json()["status"] == "failure"
    assert res.headers["x-portkey-trace-id"]


def test_open_mode_needs_no_key(app_factory, upstream) -> None:
    client = app_factory(keys=()).test_client()
    upstream.post(f"{COHERE}/rerank", json={})
    assert client.post("/v1/rerank", json={}, headers={"x-portkey-provider": "cohere"}).status_code == 200


@pytest.mark.parametrize("header, value, fragment", [
    ("x-portkey-metadata", "{not json", "x-portkey-metadata"),
    ("x-portkey-metadata", "[1,2]", "JSON object"),
    ("x-portkey-config", "{not json", "Invalid config passed. You need to pass a valid json"),
    ("x-portkey-config", '{"options": []}', "This version of config is not supported"),
    ("x-portkey-config", "[" * 100_000, "Invalid config passed. You need to pass a valid json"),
    ("x-portkey-metadata", "[" * 100_000, "x-portkey-metadata"),
    ("x-portkey-config", '{"strategy": {"mode": "roundrobin"}, "targets": [{"provider": "openai"}]}',
     "Invalid 'mode' value. Must be one of: single, loadbalance, fallback, conditional"),
    ("x-portkey-request-timeout", "soon", "x-portkey-request-timeout"),
    ("x-portkey-request-timeout", "-5", "x-portkey-request-timeout"),
])
def test_malformed_gateway_headers_are_400(client: FlaskClient, header: str, value: str, fragment: str) -> None:
    res = client.post("/v1/rerank", json={}, headers={**auth(), header: value})
    assert res.status_code == 400
    assert fragment in res.get_json()["message"]


def test_patch_on_proxy_is_405_with_allow(client: FlaskClient) -> None:
    res = client.patch("/v1/collections/x", headers=auth())
    assert res.status_code == 405
    assert res.headers["Allow"] == "DELETE, GET, POST, PUT"
    assert res.get_json()["status"] == "failure"


@pytest.mark.parametrize("path", [
    "/v1/a/%2e%2e/b", "/v1/a/%2E%2e/b", "/v1/a%2fb", "/v1/a%5cb",
    "/v1/a/%252e%252e/b", "/v1/proxy/./x", "/v1/a/..%2f",
])
def test_path_climbing_is_refused(client: FlaskClient, path: str) -> None:
    res = client.get(path, headers=auth(), environ_overrides={"RAW_URI": path})
    assert res.status_code == 400
    assert "Invalid path" in res.get_json()["message"]


def test_body_over_limit_is_413_before_upstream(app_factory, upstream) -> None:
    client = app_factory(max_body_bytes=1000).test_client()
    res = client.post("/v1/rerank", data=b"x" * 1001, headers=auth())
    assert res.status_code == 413
    assert res.get_json()["status"] == "failure"


def test_crlf_in_forwarded_header_is_refused(client: FlaskClient) -> None:
    from app.errors import BadRequest
    from app.http.headers import forwarded_headers
    with pytest.raises(BadRequest):
        forwarded_headers({"x-a": "v\r\nInjected: 1"}, ["x-a"])


def test_connection_refused_is_502_naming_host(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", body=requests.exceptions.ConnectionError("refused"))
    res = client.post("/v1/rerank", json={}, headers=auth())
    assert res.status_code == 502
    assert res.headers["x-portkey-gateway-exception"] == "true"
    assert "api.cohere.ai" in res.get_json()["message"]


def test_timeout_with_request_timeout_header_is_408(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", body=requests.exceptions.ReadTimeout("slow"))
    res = client.post("/v1/rerank", json={}, headers={**auth(), "x-portkey-request-timeout": "250"})
    assert res.status_code == 408
    assert res.get_json() == {"error": {"message": "Request exceeded the timeout sent in the request: 250ms",
                                         "type": "timeout_error", "param": None, "code": None}}


def test_upstream_error_status_and_body_pass_through(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", json={"message": "bad"}, status=422, headers={"x-upstream": "1"})
    res = client.post("/v1/rerank", json={}, headers=auth())
    assert res.status_code == 422
    assert res.get_json() == {"message": "bad"}
    assert res.headers["x-upstream"] == "1"


def test_secrets_never_in_error_bodies(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", body=requests.exceptions.ConnectionError(f"boom {PROVIDER_SECRET}"))
    res = client.post("/v1/rerank", json={}, headers=auth())
    text = res.get_data(as_text=True)
    assert PROVIDER_SECRET not in text and GATEWAY_KEY not in text


def test_unified_route_refuses_unknown_content_type(client: FlaskClient) -> None:
    res = client.post("/v1/chat/completions", data="hi", headers={**auth("openai"), "Content-Type": "text/plain"})
    assert res.status_code == 400
    assert res.get_json()["message"].startswith("Invalid content type passed: 'text/plain'")


def test_config_with_provider_at_root(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", json={})
    config = json.dumps({"provider": "cohere", "api_key": "co-from-config"})
    res = client.post("/v1/rerank", json={}, headers=gw_headers(x_portkey_config=config))
    assert res.status_code == 200
    assert upstream.calls[0].request.headers["Authorization"] == "Bearer co-from-config"
    assert res.headers["x-portkey-last-used-option-index"] == "config"


def test_unexpected_exception_is_500_without_traceback(app_factory, monkeypatch) -> None:
    app = app_factory()
    client = app.test_client()
    from app.pipeline import resolve

    def explode(*_a, **_k):
        raise RuntimeError(f"internal detail {PROVIDER_SECRET}")
    monkeypatch.setattr(resolve, "load_config", explode)
    res = client.post("/v1/rerank", json={}, headers=auth())
    assert res.status_code == 500
    assert res.get_json() == {"status": "failure", "message": "Something went wrong"}
    assert res.headers["x-portkey-gateway-exception"] == "true"


def test_unified_beats_proxy_in_the_url_map(app) -> None:
    adapter = app.url_map.bind("localhost")
    assert adapter.match("/v1/chat/completions", method="POST")[0] == "unified.chatComplete"
    assert adapter.match("/v1/proxy/chat/completions", method="POST")[0] == "proxy.legacy_proxy"
    assert adapter.match("/v1/rerank", method="POST")[0] == "proxy.proxy"
    assert adapter.match("/v1/files/abc", method="DELETE")[0] == "unified.retrieveFile"


def test_generated_trace_ids_are_unique_time_ordered_uuid7s() -> None:
    import os
    import time
    import uuid

    from app.pipeline.inbound import new_trace_id
    before = time.time_ns() // 1_000_000
    ordered = [new_trace_id() for _ in range(10_000)]
    ids = set(ordered)
    assert len(ids) == 10_000
    parsed = [uuid.UUID(i) for i in ordered]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    stamps = [u.int >> 80 for u in parsed]  # unix ms in the first 48 bits
    assert stamps == sorted(stamps) and before <= stamps[0] <= stamps[-1] <= time.time_ns() // 1_000_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker must not repeat its parent's ids
        os.write(write, new_trace_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    assert child_id != new_trace_id() and child_id not in ids
