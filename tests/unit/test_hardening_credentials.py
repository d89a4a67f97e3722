"""A credential held on the gateway only goes to its own host (docs/security.md).

The catalog's keys (api_key, AWS keys) and a saved config's api_key go to the host their entry or
config names, or to the provider's own host. A host the client chooses (x-portkey-custom-host, a
custom_host in a config it sends, an Azure resource it names) paired with such a credential is a
400 that says so, before any connection. Clients that bring their own key keep their custom hosts.
"""

from __future__ import annotations

import json

import pytest
from flask import Flask

from app.config.schema import parse_config
from app.settings import CatalogEntry
from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider

HELD_KEY = "sk-held-on-the-gateway-0001"
SAVED_KEY = "sk-saved-config-key-0002"
CLIENT_KEY = "sk-clients-own-key-0003"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def app(app_factory, fake: FakeProvider) -> Flask:
    """Return an app whose catalog and saved configs hold keys; the fake stands for every host."""
    own = f"{fake.url}/v1"
    catalog = {
        "openai-prod": CatalogEntry("openai-prod", "openai", api_key=HELD_KEY),
        "openai-hosted": CatalogEntry("openai-hosted", "openai", api_key=HELD_KEY, custom_host=own),
        "openai-opts": CatalogEntry("openai-opts", "openai", options={"openai_organization": "org-1"}),
        "bedrock-prod": CatalogEntry("bedrock-prod", "bedrock", options={
            "aws_region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "held-secret"}),
        "azure-prod": CatalogEntry("azure-prod", "azure-openai", api_key=HELD_KEY, options={
            "resource_name": "prod-res", "deployment_id": "dep", "api_version": "2024-10-21"}),
    }
    configs = {
        "pc-key": parse_config({"provider": "openai", "api_key": SAVED_KEY}),
        "pc-key-and-host": parse_config({"provider": "openai", "api_key": SAVED_KEY, "custom_host": own}),
        "pc-nested": parse_config({"custom_host": own, "strategy": {"mode": "fallback"},
                                   "targets": [{"provider": "openai", "api_key": SAVED_KEY}]}),
        "pc-catalog-and-host": parse_config({"provider": "@openai-prod", "custom_host": own}),
    }
    return app_factory(catalog=catalog, configs=configs)


def post(app: Flask, headers: dict[str, str], body: object = CHAT):
    return app.test_client().post("/v1/chat/completions", json=body,
                                  headers={"x-portkey-api-key": GATEWAY_KEY, **headers})


def client_config(config: object) -> str:
    return json.dumps(config)


REFUSED = [
    # (case, headers, body model, what the 400 names)
    ("catalog key + header host", {"x-portkey-provider": "@openai-prod", "x-portkey-custom-host": "{evil}"},
     None, ("x-portkey-custom-host", "@openai-prod")),
    ("catalog key from the body model + header host", {"x-portkey-custom-host": "{evil}"},
     "@openai-prod/gpt-4o", ("x-portkey-custom-host", "@openai-prod")),
    ("catalog key + host over the entry's own", {"x-portkey-provider": "@openai-hosted",
                                                 "x-portkey-custom-host": "{evil}"},
     None, ("x-portkey-custom-host", "@openai-hosted")),
    ("catalog key + client config custom_host", {"x-portkey-config": client_config(
        {"provider": "@openai-prod", "custom_host": "{evil}"})}, None, ("custom_host in the config", "@openai-prod")),
    ("catalog key + custom_host inherited in a client config", {"x-portkey-config": client_config(
        {"custom_host": "{evil}", "strategy": {"mode": "fallback"}, "targets": [{"provider": "@openai-prod"}]})},
     None, ("custom_host in the config", "@openai-prod")),
    ("saved config key + header host", {"x-portkey-config": "pc-key", "x-portkey-custom-host": "{evil}"},
     None, ("x-portkey-custom-host", "saved config 'pc-key'")),
    ("catalog AWS keys + header host", {"x-portkey-provider": "@bedrock-prod", "x-portkey-custom-host": "{evil}"},
     None, ("x-portkey-custom-host", "@bedrock-prod")),
    ("catalog Azure key + another resource", {"x-portkey-provider": "@azure-prod",
                                              "x-portkey-azure-resource-name": "someone-elses-res"},
     None, ("x-portkey-azure-resource-name", "@azure-prod")),
]


@pytest.mark.parametrize(("case", "headers", "model", "named"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_held_credential_never_goes_to_a_client_chosen_host(app: Flask, fake_provider: FakeProvider, case: str,
                                                              headers: dict[str, str], model: str | None,
                                                              named: tuple[str, str]) -> None:
    evil = f"{fake_provider.url}/evil"
    headers = {name: value.replace("{evil}", evil) for name, value in headers.items()}
    body = {**CHAT, "model": model} if model else CHAT
    res = post(app, {"Authorization": f"Bearer {CLIENT_KEY}", **headers}, body)
    assert res.status_code == 400, res.get_data(as_text=True)
    message = res.get_json()["message"]
    assert all(part in message for part in named), message
    assert "credential held on the gateway" in message
    assert HELD_KEY not in res.get_data(as_text=True)
    assert fake_provider.requests == []  # nothing was sent anywhere


ALLOWED = [
    # (case, headers, the key the upstream must see)
    ("saved config naming its own key and host", {"x-portkey-config": "pc-key-and-host"}, SAVED_KEY),
    ("saved config host inherited by its keyed target", {"x-portkey-config": "pc-nested"}, SAVED_KEY),
    ("saved config pairing a catalog entry with a host", {"x-portkey-config": "pc-catalog-and-host"}, HELD_KEY),
    ("catalog entry with its own host", {"x-portkey-provider": "@openai-hosted"}, HELD_KEY),
    ("client key + header host", {"x-portkey-provider": "openai", "x-portkey-custom-host": "{own}"}, CLIENT_KEY),
    ("client key + keyless catalog entry + header host", {"x-portkey-provider": "@openai-opts",
                                                          "x-portkey-custom-host": "{own}"}, CLIENT_KEY),
    ("client key + client config host", {"x-portkey-config": client_config(
        {"provider": "openai", "api_key": CLIENT_KEY, "custom_host": "{own}"})}, CLIENT_KEY),
]


@pytest.mark.parametrize(("case", "headers", "key"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_hosts_the_operator_named_or_the_client_pays_for_still_work(app: Flask, fake_provider: FakeProvider,
                                                                    case: str, headers: dict[str, str],
                                                                    key: str) -> None:
    own = f"{fake_provider.url}/v1"
    headers = {name: value.replace("{own}", own) for name, value in headers.items()}
    res = post(app, {"Authorization": f"Bearer {CLIENT_KEY}", **headers})
    assert res.status_code == 200, res.get_data(as_text=True)
    assert [r.headers["authorization"] for r in fake_provider.requests] == [f"Bearer {key}"]
