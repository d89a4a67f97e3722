"""Real clients unchanged against Portico: the openai SDK and the portkey-ai SDK."""

from __future__ import annotations

import json

import openai
from portkey_ai import Portkey

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway


def openai_client(gateway: Gateway, fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                         default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai",
                                          "x-portkey-custom-host": f"{fake.url}/v1"})


def test_openai_sdk_chat(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai_client(gateway, fake_provider)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == OPENAI_TEXT
    assert fake_provider.requests[-1].headers["authorization"] == f"Bearer {PROVIDER_SECRET}"


def test_openai_sdk_stream(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai_client(gateway, fake_provider)
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_openai_sdk_error_status_surfaces(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai_client(gateway, fake_provider).with_options(default_headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"{fake_provider.url}/v1", "x-fake-status": "429",
        "x-portkey-forward-headers": "x-fake-status"})
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a 429 must raise")
    except openai.RateLimitError as err:
        assert err.status_code == 429


def portkey_client(gateway: Gateway) -> Portkey:
    return Portkey(api_key=GATEWAY_KEY, base_url=f"{gateway.url}/v1", provider="@cohere-prod")


def as_json(answer: object) -> dict:
    """Return an SDK answer as JSON: post() gives a model, get/put/delete give the HTTP response."""
    if hasattr(answer, "model_dump_json"):
        return json.loads(answer.model_dump_json())
    return answer.json()  # type: ignore[attr-defined, no-any-return]


def test_portkey_sdk_post_get_put_delete(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = portkey_client(gateway)
    reranked = client.post("/rerank", model="rerank-v3.5", query="q", documents=["a", "b"])
    assert len(as_json(reranked)["results"]) == 2
    assert as_json(client.get(path="/collections/my-collection"))["method"] == "GET"
    put = as_json(client.put(path="/collections/my-collection", body={"name": "n"}))
    assert (put["method"], json.loads(put["body_text"])) == ("PUT", {"name": "n"})
    assert as_json(client.delete(path="/collections/my-collection"))["method"] == "DELETE"
    methods = [r.method for r in fake_provider.requests]
    assert methods == ["POST", "GET", "PUT", "DELETE"]
    assert all(r.headers["authorization"] == "Bearer co-catalog-secret-123" for r in fake_provider.requests)


def test_portkey_sdk_chat_on_unified_route(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = Portkey(api_key=GATEWAY_KEY, base_url=f"{gateway.url}/v1", provider="@openai-fake")
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == OPENAI_TEXT
    assert fake_provider.requests[-1].headers["authorization"] == "Bearer sk-catalog-openai-secret"
