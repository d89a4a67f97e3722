"""Credentials never reach error bodies, log lines or the request log (docs/security.md).

Masked by value (whatever their shape), by parameter name and by shape, on real calls through the app.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from app.logs import access_lines
from app.redact import MASK, redact_query
from app.settings import CatalogEntry, hash_key
from tests.conftest import GATEWAY_KEY, gw_headers

ADMIN_KEY = "admin-key-hardening-0001"
# None of these has a shape the patterns know (no sk-, Bearer, AIza, key=): only masking by value hides them.
HELD_KEY = "held-anthropic-cred-7f3a9c51"
HELD_COHERE_KEY = "held-cohere-cred-2b8e4d07"
BARE_KEY = "bare-client-cred-5e1d2b93"
AWS_ID = "AKIDHARDENING0EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYhardening"  # '/' and '+': written differently in URLs and JSON
AWS_TOKEN = "FwoGZXIvYXdzEXAMPLE/session+token=="
QUERY_SECRETS = {"password": "qp-password-value-1", "client_secret": "qp-client-secret-2",
                 "X-Amz-Signature": "qp-amz-signature-3", "X-Amz-Credential": "qp-amz-credential-4",
                 "X-Amz-Security-Token": "qp-amz-token-5", "passwd": "qp-passwd-value-6", "access_token": "qp-at-7",
                 "sig": "qp-sig-value-8", "api_key": "qp-api-key-9"}
COHERE = "https://api.cohere.ai/v1"
OPENAI = "https://api.openai.com/v1"
ANTHROPIC = "https://api.anthropic.com/v1"
BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com"
CHAT = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    """Yield a strict `responses` mock: an unfired registration fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def app(app_factory: Callable[..., Flask], tmp_path: Path) -> Iterator[Flask]:
    """Return an app with credentials held in its catalog, a request log and an admin key."""
    app = app_factory(
        catalog={"held": CatalogEntry(name="held", provider="anthropic", api_key=HELD_KEY),
                 "held-cohere": CatalogEntry(name="held-cohere", provider="cohere", api_key=HELD_COHERE_KEY)},
        logs_path=str(tmp_path / "logs.sqlite"), admin_key_sha256=hash_key(ADMIN_KEY))
    yield app
    app.extensions["portico"].close()


@pytest.fixture
def stderr_lines() -> Iterator[io.StringIO]:
    """Capture what the gateway's own log handler writes (its stderr lines), filters and all."""
    handlers = [h for h in logging.getLogger("app").handlers if type(h) is logging.StreamHandler]
    assert handlers, "create_app installs the gateway's log handler"
    captured = io.StringIO()
    previous = [h.setStream(captured) for h in handlers]
    yield captured
    for handler, stream in zip(handlers, previous, strict=True):
        handler.setStream(stream)  # type: ignore[arg-type]


def error_message(res) -> str:  # type: ignore[no-untyped-def]
    return res.get_json()["error"]["message"]


def finished(res):  # type: ignore[no-untyped-def]
    """Return the response once its body is read and closed: the call is recorded then."""
    res.get_data()
    res.close()
    return res


# --- error bodies -------------------------------------------------------------------------------------------


def test_a_translated_error_quoting_the_catalog_key_is_masked(client: FlaskClient, upstream) -> None:
    upstream.post(f"{ANTHROPIC}/messages", status=401, json={
        "type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {HELD_KEY}"}})
    res = client.post("/v1/chat/completions", json={**CHAT, "model": "claude-x"},
                      headers=gw_headers(x_portkey_provider="@held"))
    assert res.status_code == 401
    assert HELD_KEY not in res.get_data(as_text=True)
    assert error_message(res) == f"anthropic error: invalid x-api-key: {MASK}"
    assert res.get_json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
def test_a_clients_bare_key_is_not_echoed_through_messages_to_openai(client: FlaskClient, upstream,
                                                                      header: str) -> None:
    upstream.post(f"{OPENAI}/chat/completions", status=401, json={"error": {
        "message": f"Incorrect API key provided: {BARE_KEY}. You can find your API key at platform.openai.com.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    res = client.post("/v1/messages", json=CHAT, headers={**gw_headers(x_portkey_provider="openai"), header: BARE_KEY})
    assert res.status_code == 401
    assert BARE_KEY not in res.get_data(as_text=True)
    assert f"Incorrect API key provided: {MASK}." in error_message(res)


def test_a_proxied_error_quoting_a_held_key_is_masked(client: FlaskClient, upstream) -> None:
    upstream.post(f"{COHERE}/rerank", status=401, json={"message": f"invalid api token {HELD_COHERE_KEY}"})
    res = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]},
                      headers=gw_headers(x_portkey_provider="@held-cohere"))
    assert res.status_code == 401
    assert res.get_json() == {"message": f"invalid api token {MASK}"}
    assert int(res.headers["Content-Length"]) == len(res.get_data())


def test_a_gzipped_proxied_error_is_masked_and_a_clean_one_passes_byte_for_byte(client: FlaskClient,
                                                                                upstream) -> None:
    quoting = gzip.compress(json.dumps({"message": f"bad key {HELD_COHERE_KEY}"}).encode())
    clean = gzip.compress(b'{"message": "rate limited"}')
    for body, status in ((quoting, 401), (clean, 429)):
        upstream.add(responses.POST, f"{COHERE}/rerank", status=status, body=body,
                     headers={"Content-Encoding": "gzip"}, content_type="application/json")
    headers = {**gw_headers(x_portkey_provider="@held-cohere"), "Accept-Encoding": "gzip"}

    masked = client.post("/v1/rerank", json={"query": "q"}, headers=headers)
    assert masked.status_code == 401 and "Content-Encoding" not in masked.headers
    assert masked.get_json() == {"message": f"bad key {MASK}"}

    relayed = client.post("/v1/rerank", json={"query": "q"}, headers=headers)
    assert relayed.status_code == 429 and relayed.headers["Content-Encoding"] == "gzip"
    assert relayed.get_data() == clean


def test_a_proxied_bedrock_error_quoting_aws_keys_is_masked_in_every_form(client: FlaskClient, upstream) -> None:
    escaped = AWS_SECRET.replace("/", "\\/")  # '/' as some JSON writers escape it
    body = f'{{"message": "signature of {AWS_ID} does not match; secret {escaped}, url form ' \
           f'{quote(AWS_SECRET, safe="")}, token {AWS_TOKEN}"}}'
    upstream.post(f"{BEDROCK}/model/m/converse", status=403, body=body, content_type="application/json")
    res = client.post("/v1/model/m/converse", json={"messages": []}, headers=gw_headers(
        x_portkey_provider="bedrock", x_portkey_aws_region="us-east-1", x_portkey_aws_access_key_id=AWS_ID,
        x_portkey_aws_secret_access_key=AWS_SECRET, x_portkey_aws_session_token=AWS_TOKEN))
    assert res.status_code == 403
    text = res.get_data(as_text=True)
    for form in (AWS_ID, AWS_SECRET, quote(AWS_SECRET, safe=""), "K7MDENG", AWS_TOKEN, "session+token"):
        assert form not in text
    assert res.get_json()["message"].count(MASK) == 4


# --- logs and stored records ---------------------------------------------------------------------------------


def test_no_credential_reaches_any_log_or_record(app: Flask, client: FlaskClient, upstream, capsys, tmp_path: Path,
                                                 stderr_lines: io.StringIO) -> None:
    # 1. Secret-named query parameters (and the gateway key itself) on a proxied call.
    upstream.add(responses.POST, re.compile(rf"{re.escape(COHERE)}/rerank\?.*"), json={"results": []})
    query = "&".join([f"x-portkey-api-key={GATEWAY_KEY}", *(f"{k}={v}" for k, v in QUERY_SECRETS.items()),
                      "plain=visible-value"])
    res = finished(client.post(f"/v1/rerank?{query}", json={"query": "q"}, headers=gw_headers(
        x_portkey_provider="cohere", Authorization=f"Bearer {BARE_KEY}", x_portkey_trace_id="t-query")))
    assert res.status_code == 200
    # 2. An answer naming the client's key as its model: the access line, the record, the unpriced-model warning.
    upstream.post(f"{OPENAI}/chat/completions", json={"model": BARE_KEY, "choices": [],
                                                      "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    assert finished(client.post("/v1/chat/completions", json=CHAT, headers=gw_headers(
        x_portkey_provider="openai", Authorization=BARE_KEY, x_portkey_trace_id="t-model"))).status_code == 200
    # 3. A gateway error quoting the gateway key, with the path and metadata quoting it too.
    assert finished(client.get(f"/v1/files/{GATEWAY_KEY}", headers=gw_headers(
        x_portkey_provider=f"@{GATEWAY_KEY}", x_portkey_trace_id="t-error",
        x_portkey_metadata=json.dumps({"note": f"mine is {GATEWAY_KEY}"})))).status_code == 400
    # 4. A held key quoted in a proxied error.
    upstream.post(f"{COHERE}/rerank", status=401, json={"message": f"invalid api token {HELD_COHERE_KEY}"})
    finished(client.post("/v1/rerank", json={"query": "q"}, headers=gw_headers(x_portkey_provider="@held-cohere")))

    gateway = app.extensions["portico"]
    access_lines.flush()
    assert gateway.log_store.flush()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    logs = client.get("/admin/logs?limit=1000", headers=admin)
    assert len(logs.get_json()["logs"]) == 4
    seen = {
        "stdout (access lines)": capsys.readouterr().out,
        "stderr (log lines)": stderr_lines.getvalue(),
        "/admin/logs": logs.get_data(as_text=True),
        "/admin/dashboard": client.get("/admin/dashboard", headers=admin).get_data(as_text=True),
        "/metrics": client.get("/metrics", headers=admin).get_data(as_text=True),
        "request log file": b"".join(p.read_bytes() for p in tmp_path.glob("logs.sqlite*")).decode("latin-1"),
    }
    secrets = [GATEWAY_KEY, BARE_KEY, HELD_KEY, HELD_COHERE_KEY, *QUERY_SECRETS.values()]
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"{secret} in {where}"
    lines = [json.loads(line) for line in seen["stdout (access lines)"].splitlines() if line.startswith("{")]
    by_trace = {line["trace_id"]: line for line in lines}
    assert "plain=visible-value" in by_trace["t-query"]["query"]  # what is no secret stays readable
    assert f"password={MASK}" in by_trace["t-query"]["query"]
    assert "no price for openai/" in seen["stderr (log lines)"]  # the warning was written, masked


@pytest.mark.parametrize("name", ["x-portkey-api-key", "Password", "passwd", "pwd", "client_secret", "id_token",
                                  "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "auth",
                                  "session_token", "x%2Dapi%2Dkey"])
def test_secret_named_query_parameters_lose_their_value_and_others_stay(name: str) -> None:
    assert redact_query(f"model=gpt-4o&{name}=hidden-value&flag&empty=&x=%2F") == \
        f"model=gpt-4o&{name}={MASK}&flag&empty=&x=%2F"
