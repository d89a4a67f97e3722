"""Through gunicorn: a provider option cannot smuggle in a host, and a catalog key never goes to a client's host."""

from __future__ import annotations

import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.listener import Listener
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_resource_name_holding_a_host_is_a_400_and_nothing_is_dialled(gateway: Gateway) -> None:
    with Listener() as internal:
        res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10, headers={
            "x-portkey-api-key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_SECRET}",
            "x-portkey-provider": "azure-openai", "x-portkey-azure-resource-name": f"127.0.0.1:{internal.port}/x?",
            "x-portkey-azure-deployment-id": "dep", "x-portkey-azure-api-version": "2024-10-21"})
        assert res.status_code == 400
        assert "x-portkey-azure-resource-name" in res.json()["message"]
        assert internal.accepted == 0


def test_a_catalog_key_is_not_sent_to_a_host_the_client_names(gateway: Gateway,
                                                               fake_provider: FakeProvider) -> None:
    with Listener() as chosen:
        res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10, headers={
            "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@openai-fake",
            "x-portkey-custom-host": f"http://127.0.0.1:{chosen.port}/v1"})
        assert res.status_code == 400
        message = res.json()["message"]
        assert "x-portkey-custom-host" in message and "@openai-fake" in message
        assert chosen.accepted == 0
    assert fake_provider.requests == []
    # The entry's own host still gets its key.
    res = requests.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "@openai-fake"})
    assert res.status_code == 200
    assert [r.headers["authorization"] for r in fake_provider.requests] == ["Bearer sk-catalog-openai-secret"]
