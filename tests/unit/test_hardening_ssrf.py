"""Provider options cannot steer a call to another host or path, and every final URL passes the host policy.

A provider option that becomes part of an upstream URL (Azure resource, deployment and API version,
Vertex region and project, AWS region) must have its own grammar; anything else is a 400 that names
the header or field, sent before any connection is opened. The provider's own host goes through the
custom-host policy too (docs/security.md).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from app.call.context import UNIFIED, RequestContext, ResolvedTarget
from app.pipeline import upstream
from app.providers.registry import get_provider
from app.settings import SettingsError, load_settings
from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.listener import Listener


@pytest.fixture
def listener() -> Iterator[Listener]:
    """Yield a loopback listener standing for an internal service an attacker wants to reach."""
    with Listener() as lst:
        yield lst


@pytest.fixture
def closed_app(app_factory) -> Flask:
    """Return an app with nothing private allow-listed: loopback is as internal as any other network."""
    return app_factory(custom_hosts_allow=())


ROUTES = [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/embeddings", {"model": "m", "input": "hi"}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/rerank", {"query": "q", "documents": ["a"]}),  # the proxy
    ("/v1/proxy/chat/completions", {"model": "m", "messages": []}),  # the legacy proxy prefix
]


def injections(port: int) -> list[tuple[dict[str, str], str]]:
    """Return (provider headers, header named by the 400) that once opened a connection to loopback:port."""
    return [
        ({"x-portkey-provider": "azure-openai", "x-portkey-azure-resource-name": f"127.0.0.1:{port}/x?",
          "x-portkey-azure-deployment-id": "dep", "x-portkey-azure-api-version": "2024-10-21"},
         "x-portkey-azure-resource-name"),
        ({"x-portkey-provider": "vertex-ai", "x-portkey-vertex-region": f"a@127.0.0.1:{port}/x?",
          "x-portkey-vertex-project-id": "my-project"}, "x-portkey-vertex-region"),
        ({"x-portkey-provider": "bedrock", "x-portkey-aws-region": f"x@127.0.0.1:{port}/x?",
          "x-portkey-aws-access-key-id": "AKIDEXAMPLE", "x-portkey-aws-secret-access-key": "s3cret"},
         "x-portkey-aws-region"),
    ]


def call(app: Flask, path: str, body: object, headers: dict[str, str]):
    return app.test_client().post(path, json=body, headers={
        "x-portkey-api-key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_SECRET}", **headers})


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["azure-openai", "vertex-ai", "bedrock"])
def test_a_host_smuggled_in_a_provider_option_is_a_400_before_any_connection(
        closed_app: Flask, listener: Listener, path: str, body: object, which: int) -> None:
    headers, named = injections(listener.port)[which]
    res = call(closed_app, path, body, headers)
    assert res.status_code == 400, res.get_data(as_text=True)
    message = res.get_json()["message"]
    assert named in message and "must be" in message
    assert listener.accepted == 0


def test_the_cloud_metadata_address_is_not_a_resource_name(closed_app: Flask) -> None:
    res = call(closed_app, "/v1/chat/completions", ROUTES[0][1], {
        "x-portkey-provider": "azure-openai", "x-portkey-azure-resource-name": "169.254.169.254/latest/meta-data?",
        "x-portkey-azure-deployment-id": "dep", "x-portkey-azure-api-version": "2024-10-21"})
    assert res.status_code == 400
    assert "x-portkey-azure-resource-name" in res.get_json()["message"]
    assert "Azure resource name" in res.get_json()["message"]


@pytest.mark.parametrize(("header", "value"), [
    ("x-portkey-azure-deployment-id", "dep/../../admin?"),
    ("x-portkey-azure-deployment-id", ".."),
    ("x-portkey-azure-deployment-id", "dep#frag"),
    ("x-portkey-azure-deployment-id", "dep%2F.."),
    ("x-portkey-azure-deployment-id", "de p"),
    ("x-portkey-azure-api-version", "2024-10-21&api-key=x"),
])
def test_azure_path_and_query_options_cannot_add_to_the_url(app_factory, listener: Listener, header: str,
                                                            value: str) -> None:
    app = app_factory(custom_hosts_allow=("127.0.0.1",))  # the host is fine: the path is the attack
    azure = {"x-portkey-provider": "azure-openai", "x-portkey-custom-host": f"http://127.0.0.1:{listener.port}",
             "x-portkey-azure-deployment-id": "dep", "x-portkey-azure-api-version": "2024-10-21", header: value}
    res = call(app, "/v1/chat/completions", ROUTES[0][1], azure)
    assert res.status_code == 400
    assert header in res.get_json()["message"]
    assert listener.accepted == 0


@pytest.mark.parametrize("project", ["../../x", "..", "my-project/locations/x", "my-project?x=1", "My Project"])
def test_a_vertex_project_id_is_a_project_id(app_factory, listener: Listener, project: str) -> None:
    app = app_factory(custom_hosts_allow=("127.0.0.1",))
    res = call(app, "/v1/chat/completions", ROUTES[0][1], {
        "x-portkey-provider": "vertex-ai", "x-portkey-custom-host": f"http://127.0.0.1:{listener.port}",
        "x-portkey-vertex-region": "us-central1", "x-portkey-vertex-project-id": project})
    assert res.status_code == 400
    assert "x-portkey-vertex-project-id" in res.get_json()["message"]
    assert listener.accepted == 0


def test_a_config_field_is_held_to_the_same_grammar(closed_app: Flask, listener: Listener) -> None:
    config = json.dumps({"provider": "azure-openai", "resource_name": f"127.0.0.1:{listener.port}/x?",
                         "deployment_id": "dep", "api_version": "2024-10-21"})
    res = call(closed_app, "/v1/chat/completions", ROUTES[0][1], {"x-portkey-config": config})
    assert res.status_code == 400
    assert any("resource_name" in error and "Azure resource name" in error for error in res.get_json()["errors"])
    assert listener.accepted == 0


@pytest.mark.parametrize(("section", "field", "value"), [
    ("catalog.az", "resource_name", "169.254.169.254/latest/meta-data?"),
    ("catalog.bed", "aws_region", "x@127.0.0.1:22101/x?"),
    ("configs.pc-az", "resource_name", "127.0.0.1:22101/x?"),
])
def test_a_catalog_entry_or_saved_config_with_a_malformed_option_stops_start_up(
        tmp_path: Path, section: str, field: str, value: str) -> None:
    provider = "bedrock" if field == "aws_region" else "azure-openai"
    toml = f'[{section}]\nprovider = "{provider}"\n{field} = "{value}"\n'
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={}, path=str(path))
    assert section in str(caught.value) and field in str(caught.value)


def test_a_refused_value_is_echoed_short(closed_app: Flask) -> None:
    res = call(closed_app, "/v1/chat/completions", ROUTES[0][1], {
        "x-portkey-provider": "bedrock", "x-portkey-aws-region": "us-east-1." + "A" * 5000})
    assert res.status_code == 400
    assert len(res.get_data()) < 400


def test_url_options_are_checked_where_the_url_is_built_too() -> None:
    azure = get_provider("azure-openai")
    with pytest.raises(Exception) as caught:
        azure.base_for({"resource_name": "127.0.0.1:22101/x?"})
    assert getattr(caught.value, "status", None) == 400
    with pytest.raises(Exception) as caught:
        azure.unified_path("/chat/completions", {"deployment_id": "../x", "api_version": "2024-10-21"})
    assert getattr(caught.value, "status", None) == 400


def test_real_option_values_pass() -> None:
    assert get_provider("azure-openai").base_for({"resource_name": "my-res-01"}) == \
        "https://my-res-01.openai.azure.com/openai"
    assert get_provider("bedrock").base_for({"aws_region": "us-gov-west-1"}) == \
        "https://bedrock-runtime.us-gov-west-1.amazonaws.com"
    assert get_provider("vertex-ai").base_for({"vertex_region": "northamerica-northeast1"}) == \
        "https://northamerica-northeast1-aiplatform.googleapis.com"


# ---------------------------------------------------------------- the final URL passes the host policy


def _resolve_to(address: str):
    def resolver(host, port, *_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
    return resolver


@pytest.mark.parametrize(("provider", "headers"), [
    ("openai", {}),
    ("azure-openai", {"x-portkey-azure-resource-name": "my-res", "x-portkey-azure-deployment-id": "dep",
                      "x-portkey-azure-api-version": "2024-10-21"}),
    ("bedrock", {"x-portkey-aws-region": "us-east-1", "x-portkey-aws-access-key-id": "AKIDEXAMPLE",
                 "x-portkey-aws-secret-access-key": "s3cret"}),
])
def test_a_providers_own_host_that_resolves_inward_is_refused(closed_app: Flask, provider: str,
                                                              headers: dict[str, str]) -> None:
    closed_app.extensions["portico"].policy._resolver = _resolve_to("169.254.169.254")
    res = call(closed_app, "/v1/chat/completions", ROUTES[0][1], {"x-portkey-provider": provider, **headers})
    assert res.status_code == 400, res.get_data(as_text=True)
    assert res.get_json()["message"] == "Invalid upstream host"
    assert "169.254.169.254" in res.get_json()["errors"][0] and "link-local" in res.get_json()["errors"][0]


def test_a_providers_own_host_is_connected_at_the_address_the_policy_checked(closed_app: Flask) -> None:
    policy = closed_app.extensions["portico"].policy
    policy._resolver = _resolve_to("8.8.8.8")  # public; only checked here, never dialled
    ctx = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={}, route=UNIFIED)
    url, pinned = upstream.upstream_url(ctx, ResolvedTarget(provider=get_provider("openai")), policy)
    assert url == "https://api.openai.com/v1/chat/completions"
    assert pinned is not None and (pinned.host, pinned.port, pinned.address) == ("api.openai.com", 443,
                                                                                  "8.8.8.8")


def test_a_providers_own_host_still_goes_through_the_egress_proxy(app_factory, listener: Listener,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # With [upstream] trust_env the proxy makes the connection: pinning the checked address must not bypass it.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{listener.port}")
    app = app_factory(trust_env=True, custom_hosts_allow=("127.0.0.1",))
    app.extensions["portico"].policy._resolver = _resolve_to("127.0.0.1")
    res = call(app, "/v1/chat/completions", ROUTES[0][1], {"x-portkey-provider": "openai"})
    assert res.status_code == 502
    assert listener.accepted == 1  # the proxy (this listener) was asked, not 127.0.0.1:443 directly
