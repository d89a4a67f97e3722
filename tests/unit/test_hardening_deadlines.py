"""Timeouts are deadlines: a host that trickles bytes cannot stretch a wait (docs/security.md).

Each trickler sends one byte every 0.25 s, so a per-read timer of 1 s never fires and the old code waited
for the whole trickle (10+ s); a deadline of 1 s ends the wait after about 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import requests.adapters
from flask import Flask

from app.guardrails import HookContext, remote, run_hooks
from app.guardrails.context import CheckError
from app.http.deadline import Deadline
from app.http.hosts import HostPolicy
from app.http.sessions import new_session
from app.pipeline.upstream import HookHTTP
from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider
from tests.fakes.trickle import Trickler, http_answer, self_signed_server

LIMIT_S = 2.5  # a 1 s deadline plus room for a busy machine; the trickles below last 10+ s


def hook_http() -> HookHTTP:
    session = new_session()
    return HookHTTP(lambda: session, HostPolicy(("127.0.0.1",)))


def test_jwks_body_trickle_is_cut_at_the_fetch_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "JWKS_TIMEOUT_S", 1.0)
    body = b'{"keys": []}' + b" " * 40
    answer = http_answer(body)
    with Trickler(answer, fast=len(answer) - len(body)) as slow:  # the head at once, the body byte by byte
        started = time.monotonic()
        with pytest.raises(CheckError, match="JWKS fetch timed out after 1000 ms"):
            remote.fetch_jwks(f"{slow.url}/jwks", hook_http())
        assert time.monotonic() - started < LIMIT_S


def test_webhook_over_tls_with_trickled_headers_is_cut_at_its_timeout(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    context, cert = self_signed_server(str(tmp_path))
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", cert)  # trust the test's own certificate
    with Trickler(http_answer(b'{"verdict": true}', pad=40), tls=context) as slow:
        check = {"id": "default.webhook", "parameters": {"webhookURL": f"{slow.url}/hook", "timeout": 1000}}
        ctx = HookContext("before", "chatComplete", {"messages": []}, None, {}, {}, "openai", hook_http())
        started = time.monotonic()
        entry = run_hooks([{"id": "h", "type": "guardrail", "checks": [check]}], ctx).results[0]["checks"][0]
        assert time.monotonic() - started < LIMIT_S
    assert entry["error"] == "webhook timed out after 1000 ms"


def test_without_a_request_timeout_the_read_timeout_is_the_deadline(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(read_timeout_s=1.0).test_client()
    with Trickler(http_answer(pad=40)) as slow:
        started = time.monotonic()
        res = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={
            "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
            "x-portkey-custom-host": f"{slow.url}/v1", "Authorization": "Bearer x"})
        elapsed = time.monotonic() - started
    assert res.status_code == 502
    assert res.get_json()["message"].endswith("timed out")
    assert elapsed < LIMIT_S


def test_a_deadline_leaves_a_prompt_kept_alive_connection_alone() -> None:
    session = new_session()
    with FakeProvider() as fake:
        for _ in range(3):
            with Deadline(0.3) as wait:
                res = session.get(f"{fake.url}/v1/models", timeout=(1.0, 1.0))
            assert res.status_code == 200 and not wait.expired
        time.sleep(0.4)  # past every deadline above: the pooled connection must still be usable
        assert session.get(f"{fake.url}/v1/models", timeout=(1.0, 1.0)).status_code == 200
