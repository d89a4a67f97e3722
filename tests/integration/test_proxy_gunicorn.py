"""The proxy end to end: a real client → gunicorn (Portico) → the fake provider, all on loopback."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway, free_port


def via(fake: FakeProvider, provider: str = "cohere", **extra: str) -> dict[str, str]:
    """Return headers that send a call through the gateway to the fake provider."""
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider,
               "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}"}
    headers.update(extra)
    return headers


def test_rerank_through_gunicorn(gateway: Gateway, fake_provider: FakeProvider) -> None:
    body = {"model": "rerank-v3.5", "query": "q", "documents": ["a", "b", "c"]}
    res = requests.post(f"{gateway.url}/v1/rerank?x=1", json=body, headers=via(fake_provider))
    assert res.status_code == 200, res.text
    assert len(res.json()["results"]) == 3
    seen = fake_provider.requests[-1]
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/rerank", "x=1")
    assert seen.headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
    assert not [h for h in seen.headers if h.startswith("x-portkey-")]
    assert res.headers["x-portkey-provider"] == "cohere"
    assert res.headers["x-portkey-trace-id"]


def test_catalog_entry_needs_no_client_secret(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.post(f"{gateway.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                        headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@cohere-prod"})
    assert res.status_code == 200, res.text
    assert fake_provider.requests[-1].headers["authorization"] == "Bearer co-catalog-secret-123"


def test_get_put_delete_reach_the_provider_path(gateway: Gateway, fake_provider: FakeProvider) -> None:
    url = f"{gateway.url}/v1/collections/my-collection"
    for method in ("GET", "PUT", "DELETE"):
        res = requests.request(method, url, headers=via(fake_provider), json={"a": 1} if method == "PUT" else None)
        assert res.status_code == 200, res.text
        echo = res.json()
        assert (echo["method"], echo["path"]) == (method, "/v1/collections/my-collection")
    assert json.loads(fake_provider.requests[1].body) == {"a": 1}
    assert fake_provider.requests[2].body == b""
    assert fake_provider.requests[0].body == b""
    assert "content-length" not in fake_provider.requests[0].headers  # a GET without a body stays without one


def test_multipart_body_and_boundary_are_forwarded_byte_for_byte(gateway: Gateway,
                                                                 fake_provider: FakeProvider) -> None:
    payload = bytes(range(256)) * 100
    req = requests.Request("POST", f"{gateway.url}/v1/audio/upload", headers=via(fake_provider),
                           files={"file": ("a.wav", payload, "audio/wav")}, data={"model": "whisper-1"}).prepare()
    res = requests.Session().send(req)
    assert res.status_code == 200
    seen = fake_provider.requests[-1]
    assert seen.body == req.body
    assert seen.headers["content-type"] == req.headers["Content-Type"]


def test_binary_and_chunked_uploads_arrive_intact(gateway: Gateway, fake_provider: FakeProvider) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, over the in-memory spool threshold

    def pieces():
        for i in range(0, len(blob), 100_000):
            yield blob[i:i + 100_000]
    for data in (blob, pieces()):
        res = requests.post(f"{gateway.url}/v1/files/raw", data=data,
                            headers={**via(fake_provider), "Content-Type": "application/octet-stream"})
        assert res.status_code == 200
        assert res.json()["body_sha256"] == hashlib.sha256(blob).hexdigest()


def test_large_download_streams_through(gateway: Gateway, fake_provider: FakeProvider) -> None:
    size = 50 * 1024 * 1024
    digest = hashlib.sha256()
    with requests.get(f"{gateway.url}/v1/big", headers=via(fake_provider, **{"x-fake-body-bytes": str(size)}),
                      stream=True) as res:
        assert res.status_code == 200
        assert int(res.headers["Content-Length"]) == size
        got = 0
        for chunk in res.iter_content(1 << 20):
            got += len(chunk)
            digest.update(chunk)
    assert got == size


def test_sse_events_reach_the_client_as_the_upstream_sends_them(gateway: Gateway,
                                                                fake_provider: FakeProvider) -> None:
    headers = via(fake_provider, "openai", **{"x-fake-events": "4", "x-fake-event-interval-ms": "200",
                                              "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"})
    start = time.monotonic()
    arrivals = []
    with requests.post(f"{gateway.url}/v1/chat/completions", json={"model": "gpt-x", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}, headers=headers, stream=True) as res:
        assert res.status_code == 200
        assert res.headers["Content-Type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 5  # 4 content chunks (+ a final one) and [DONE]
    gaps = [b - a for a, b in zip(arrivals[:3], arrivals[1:4], strict=True)]
    assert all(gap > 0.12 for gap in gaps), arrivals  # not held back and released together


def test_gzip_answer_keeps_its_encoding(gateway: Gateway, fake_provider: FakeProvider) -> None:
    with requests.get(f"{gateway.url}/v1/models", headers=via(fake_provider, "openai", **{"x-fake-gzip": "1",
                      "Accept-Encoding": "gzip"}), stream=True) as res:
        raw = res.raw.read(decode_content=False)
    assert res.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))


def test_redirects_are_returned_not_followed(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.get(f"{gateway.url}/v1/moved", allow_redirects=False,
                       headers=via(fake_provider, **{"x-fake-redirect": "http://169.254.169.254/latest"}))
    assert res.status_code == 302
    assert res.headers["Location"] == "http://169.254.169.254/latest"
    assert len(fake_provider.requests) == 1


def test_request_timeout_answers_408(gateway: Gateway, fake_provider: FakeProvider) -> None:
    start = time.monotonic()
    res = requests.post(f"{gateway.url}/v1/rerank", json={}, headers=via(
        fake_provider, **{"x-fake-delay-ms": "3000", "x-portkey-request-timeout": "300"}))
    assert res.status_code == 408
    assert time.monotonic() - start < 2
    assert res.json()["error"]["type"] == "timeout_error"


def test_hanging_upstream_is_cut_by_the_timeout(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.get(f"{gateway.url}/v1/x", headers=via(fake_provider, **{"x-fake-hang": "1",
                       "x-portkey-request-timeout": "400"}), timeout=10)
    assert res.status_code == 408


def test_unreachable_upstream_is_502_naming_host_and_cause(gateway: Gateway) -> None:
    port = free_port()
    res = requests.post(f"{gateway.url}/v1/rerank", json={}, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
        "x-portkey-custom-host": f"http://127.0.0.1:{port}"})
    assert res.status_code == 502
    assert res.headers["x-portkey-gateway-exception"] == "true"
    message = res.json()["message"]
    assert "127.0.0.1" in message and "connection refused" in message


def test_garbage_answer_is_502(gateway: Gateway, fake_provider: FakeProvider) -> None:
    res = requests.get(f"{gateway.url}/v1/x", headers=via(fake_provider, **{"x-fake-garbage": "1"}))
    assert res.status_code == 502
    assert "not valid HTTP" in res.json()["message"]


def test_reset_mid_body_is_not_a_clean_end(gateway: Gateway, fake_provider: FakeProvider) -> None:
    # The gateway cuts the client connection short, so the client sees a broken body, not a clean end.
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{gateway.url}/v1/x", headers=via(fake_provider, **{"x-fake-reset": "1"}))  # reads the body
    assert requests.get(f"{gateway.url}/healthz").status_code == 200


def test_dot_segments_are_refused_as_sent(gateway: Gateway) -> None:
    """A raw `..` path (clients such as requests would normalise it away) never reaches a provider."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    conn.request("GET", "/v1/../admin/logs", headers={"x-portkey-api-key": GATEWAY_KEY,
                                                     "x-portkey-provider": "cohere"})
    res = conn.getresponse()
    assert res.status == 400
    assert "Invalid path" in json.loads(res.read())["message"]


def test_custom_host_policy_applies_to_legacy_proxy(gateway: Gateway) -> None:
    for host in ("http://169.254.169.254", "http://10.0.0.1", "http://2852039166", "http://[::1]:80", "http://[::ffff:169.254.169.254]",
                 "http://user@127.0.0.1", "http://0xa9fea9fe", "http://0251.0376.0251.0376"):
        res = requests.post(f"{gateway.url}/v1/proxy/chat/completions", json={}, headers={
            "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai", "x-portkey-custom-host": host})
        assert res.status_code == 400, host
        assert res.json()["message"].startswith("Invalid custom host: ")


def test_patch_is_405_with_allow(gateway: Gateway) -> None:
    res = requests.patch(f"{gateway.url}/v1/collections/x", headers={"x-portkey-api-key": GATEWAY_KEY})
    assert res.status_code == 405
    assert res.headers["Allow"] == "DELETE, GET, POST, PUT"


def test_keep_alive_connections_are_reused(gateway: Gateway) -> None:
    with FakeProvider() as own:
        session = requests.Session()
        for _ in range(50):
            res = session.post(f"{gateway.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                               headers=via(own))
            assert res.status_code == 200
        assert own.connections == 1
