"""Through gunicorn: no credential reaches an error body, stdout, stderr, the request log or /admin.

The promise of docs/security.md, checked on real calls by grepping everything the gateway wrote.
"""

from __future__ import annotations

import json
import time

import requests

from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELD_KEY = "co-catalog-secret-123"  # [catalog.cohere-prod] in gateway_toml: the client never sees it
BARE_KEY = "bare-client-cred-77aa0c"  # no sk-/Bearer shape: only masking by value hides it
QUERY_SECRETS = {"password": "qp-password-it-1", "client_secret": "qp-client-secret-it-2",
                 "X-Amz-Signature": "qp-amz-signature-it-3", "X-Amz-Security-Token": "qp-amz-token-it-4"}
TRACES = ("hs-held", "hs-bare", "hs-query", "hs-model", "hs-error")


def headers(fake: FakeProvider, provider: str, trace: str, **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider, "x-portkey-trace-id": trace,
            "x-portkey-custom-host": f"{fake.url}/v1", **extra}


def written(gw: Gateway) -> tuple[list[dict], str]:
    """Return the request-log rows and the output (stdout, stderr) once this test's calls are in both."""
    deadline = time.monotonic() + 5
    while True:
        rows = requests.get(f"{gw.url}/admin/logs", params={"limit": 1000}, headers=ADMIN).json()["logs"]
        output = gw.logs()
        if ({row["trace_id"] for row in rows} >= set(TRACES) and all(f'"{t}"' in output for t in TRACES)) \
                or time.monotonic() > deadline:
            return rows, output
        time.sleep(0.1)


def test_no_credential_leaves_the_gateway(gateway: Gateway, fake_provider: FakeProvider) -> None:
    gw = gateway
    chat = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    # A held catalog key quoted in a proxied error.
    fake_provider.enqueue(401, {"message": f"invalid api token {HELD_KEY}"})
    held = requests.post(f"{gw.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                         headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@cohere-prod",
                                  "x-portkey-trace-id": "hs-held"})
    # The client's own bare key quoted in an error, through /v1/messages to an OpenAI-like provider.
    fake_provider.enqueue(401, {"error": {"message": f"Incorrect API key provided: {BARE_KEY}",
                                          "type": "invalid_request_error", "code": "invalid_api_key"}})
    bare = requests.post(f"{gw.url}/v1/messages", json=chat,
                         headers=headers(fake_provider, "openai", "hs-bare", Authorization=BARE_KEY))
    # Secret-named query parameters, the gateway key among them.
    query = "&".join([f"x-portkey-api-key={GATEWAY_KEY}", *(f"{k}={v}" for k, v in QUERY_SECRETS.items())])
    ok = requests.post(f"{gw.url}/v1/rerank?{query}", json={"query": "q", "documents": ["a"]},
                       headers=headers(fake_provider, "cohere", "hs-query", Authorization=f"Bearer {BARE_KEY}"))
    # A model named like the client's key: the access line, the record and the unpriced-model warning.
    model = requests.post(f"{gw.url}/v1/chat/completions", json={**chat, "model": BARE_KEY},
                          headers=headers(fake_provider, "openai", "hs-model", Authorization=f"Bearer {BARE_KEY}"))
    # A gateway error quoting the gateway key.
    error = requests.post(f"{gw.url}/v1/rerank", json={}, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": f"@{GATEWAY_KEY}", "x-portkey-trace-id": "hs-error"})

    assert [r.status_code for r in (held, bare, ok, model, error)] == [401, 401, 200, 200, 400]
    assert HELD_KEY not in held.text and BARE_KEY not in bare.text
    rows, output = written(gw)
    lines = [json.loads(line) for line in gw.stdout.read_text().splitlines() if line.startswith("{")]
    assert {row["trace_id"] for row in rows} >= set(TRACES) and {line["trace_id"] for line in lines} >= set(TRACES)
    seen = {"/admin/logs": json.dumps(rows), "stdout and stderr": output,
            "/admin/dashboard": requests.get(f"{gw.url}/admin/dashboard", headers=ADMIN).text,
            "/metrics": requests.get(f"{gw.url}/metrics", headers=ADMIN).text,
            "request log file": b"".join(p.read_bytes() for p in gw.logs_path.parent.glob("logs.sqlite*"))
            .decode("latin-1")}
    for where, text in seen.items():
        for secret in (GATEWAY_KEY, HELD_KEY, BARE_KEY, *QUERY_SECRETS.values()):
            assert secret not in text, f"{secret} in {where}"
    assert "no price for openai/" in output  # the warning was written, masked
