"""A provider is one object: base URL rule, auth, options and adapters on the registry's entry (docs/providers.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import requests
from requests.auth import AuthBase

from app.config.models import PROVIDER_OPTION_FIELDS
from app.errors import BadRequest
from app.http.body import Body
from app.pipeline.upstream import prepare
from app.providers.registry import CHAT, EMBED, OPTION_NAMES, PROVIDERS, get_provider
from app.settings import CATALOG_FIELDS
from app.translate import _load

APP = Path(__file__).resolve().parents[2] / "app"
# A valid value of every provider option, so every base URL rule can be run.
GOOD_OPTIONS = {
    "resource_name": "my-resource", "deployment_id": "gpt-4o-prod", "api_version": "2024-10-21",
    "aws_region": "us-east-1", "vertex_project_id": "my-project-123", "vertex_region": "us-central1",
}
CUSTOM_HOST_ONLY = {"ollama"}
# The one header each provider's credential goes in, and how.
AUTH_HEADER = {"anthropic": ("x-api-key", "sk-test"), "azure-openai": ("api-key", "sk-test"),
               "google": ("x-goog-api-key", "sk-test"), "bedrock": ("Authorization", "Bearer sk-test")}
CLIENT_HEADERS = {"Content-Type": "application/json", "X-Client": "kept"}


def prepared_request(url: str = "https://api.example.com/v1/chat/completions") -> requests.PreparedRequest:
    return prepare("POST", url, dict(CLIENT_HEADERS), Body(b'{"model":"m"}'), False)


@pytest.mark.parametrize("slug", sorted(PROVIDERS))
def test_every_provider_has_a_base_url_rule(slug: str) -> None:
    provider = get_provider(slug)
    if slug in CUSTOM_HOST_ONLY:
        with pytest.raises(BadRequest, match="needs a custom host"):
            provider.base_for(GOOD_OPTIONS)
        return
    base = provider.base_for(GOOD_OPTIONS)
    assert re.fullmatch(r"https://[a-z0-9.-]+(/[a-z0-9/]*)?", base), base


@pytest.mark.parametrize("slug", sorted(PROVIDERS))
def test_every_provider_has_an_auth_that_sends_the_credential_in_one_header(slug: str) -> None:
    auth = get_provider(slug).auth_for("sk-test", {"aws_region": "us-east-1"})
    assert isinstance(auth, AuthBase) and "sk-test" not in repr(auth)
    prepared = auth(prepared_request())
    header, value = AUTH_HEADER.get(slug, ("Authorization", "Bearer sk-test"))
    sent = dict(prepared.headers)
    assert sent.pop(header) == value
    assert sent == {**CLIENT_HEADERS, "Content-Length": "13"}


# Bedrock without a key signs with AWS keys instead: the SigV4 tests below cover it.
@pytest.mark.parametrize("slug", sorted(set(PROVIDERS) - {"bedrock"}))
def test_without_a_credential_no_auth_header_is_added(slug: str) -> None:
    prepared = get_provider(slug).auth_for(None, {})(prepared_request())
    assert dict(prepared.headers) == {**CLIENT_HEADERS, "Content-Length": "13"}


def test_every_provider_option_is_in_the_one_list_the_schema_and_the_catalog_use() -> None:
    declared = [name for provider in PROVIDERS.values() for name in provider.option_headers.values()]
    assert sorted(declared) == sorted(OPTION_NAMES) and len(set(OPTION_NAMES)) == len(OPTION_NAMES)
    assert tuple(PROVIDER_OPTION_FIELDS) == OPTION_NAMES
    assert CATALOG_FIELDS == ("provider", "api_key", "custom_host", "models", *OPTION_NAMES)
    for provider in PROVIDERS.values():
        for suffix, name in provider.option_headers.items():
            assert suffix.replace("-", "_").endswith(name.removeprefix("azure_")), (provider.slug, suffix)


@pytest.mark.parametrize("slug", sorted(p.slug for p in PROVIDERS.values() if p.adapters))
def test_each_adapter_a_provider_names_loads(slug: str) -> None:
    adapters = get_provider(slug).adapters
    assert set(adapters) <= {CHAT, EMBED}
    for name in adapters.values():
        assert _load(name) is not None


def test_sigv4_signs_with_the_aws_headers() -> None:
    options = {"aws_region": "eu-west-1", "aws_access_key_id": "AKIDEXAMPLE",
               "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "aws_session_token": "tok"}
    prepared = prepared_request("https://bedrock-runtime.eu-west-1.amazonaws.com/model/m/converse")
    prepared.headers["x-amz-date"] = "stale"  # a client's own signing: replaced, not kept
    auth = get_provider("bedrock").auth_for(None, options)
    assert "wJalr" not in repr(auth)
    headers = auth(prepared).headers
    assert re.fullmatch(r"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\d{8}/eu-west-1/bedrock/aws4_request, "
                        r"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=[0-9a-f]{64}",
                        headers["Authorization"])
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["X-Amz-Date"])
    assert headers["X-Amz-Security-Token"] == "tok"
    assert headers["Host"] == "bedrock-runtime.eu-west-1.amazonaws.com"


def test_sigv4_without_aws_keys_is_a_400_naming_the_headers() -> None:
    auth = get_provider("bedrock").auth_for(None, {"aws_region": "us-east-1"})
    with pytest.raises(BadRequest, match="x-portkey-aws-access-key-id and x-portkey-aws-secret-access-key"):
        auth(prepared_request())


def _literal_slugs(node: ast.expr) -> list[str]:
    """Return the provider slugs a comparison operand spells out: a string, or a literal tuple/list/set of them."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in PROVIDERS]


def test_no_code_branches_on_a_provider_name_or_auth_kind() -> None:
    """Provider-specific behaviour lives on the provider entry: nothing compares a slug or an auth kind."""
    found = []
    for py in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            texts = [ast.unparse(o) for o in operands]
            on_slug = any(re.search(r"slug|provider", t) for t in texts)
            if on_slug and any(_literal_slugs(o) for o in operands) or any(t.endswith(".auth") for t in texts):
                found.append(f"{py.relative_to(APP.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
