"""Through gunicorn: a translated stream that resets before its first event falls back, or is the gateway's 502.

Before, gunicorn answered its own HTML 500 (the error came out of the body iterator before any byte), and the
fallback never ran (docs/security.md).
"""

from __future__ import annotations

import json

import requests

from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway
from tests.unit.test_hardening_broken_stream import CHAT, BrokenUpstream, anthropic_at, events, headers


def test_a_reset_before_the_first_event_falls_back_through_gunicorn(gateway: Gateway,
                                                                    fake_provider: FakeProvider) -> None:
    with BrokenUpstream() as broken:
        config = {"strategy": {"mode": "fallback"}, "targets": [
            anthropic_at(broken), {"provider": "openai", "custom_host": f"{fake_provider.url}/v1", "api_key": "k"}]}
        res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers(config), timeout=10)
        assert res.status_code == 200, res.text[:300]
        assert res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
        assert events(res.text)[-1] == "[DONE]"
        assert broken.requests == 1


def test_a_reset_before_the_first_event_is_a_json_502_through_gunicorn(gateway: Gateway) -> None:
    with BrokenUpstream() as broken:
        res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers(anthropic_at(broken)),
                            timeout=10)
    assert res.status_code == 502, res.text[:300]
    assert res.headers["content-type"] == "application/json"
    assert res.headers["x-portkey-provider"] == "anthropic"
    body = json.loads(res.text)
    assert body["status"] == "failure" and "broke off" in body["message"] and "127.0.0.1" in body["message"]
