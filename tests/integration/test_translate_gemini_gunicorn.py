"""The openai SDK, unchanged, against Portico under gunicorn, translated to the fake Gemini API and Vertex AI."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.fake_gemini import GEMINI_TEXT
from tests.fakes.provider import FakeProvider, _vector
from tests.integration.conftest import Gateway

VERTEX_PATH = "/v1/projects/my-proj/locations/europe-west4/publishers/google/models"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}]


def client(gateway: Gateway, fake: FakeProvider, provider: str = "google", **headers: str) -> openai.OpenAI:
    default = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider, "x-portkey-custom-host": fake.url,
               "x-portkey-forward-headers": "x-fake-tool-call, x-fake-block, x-fake-stream-error"}
    if provider == "vertex-ai":
        default.update({"x-portkey-vertex-project-id": "my-proj", "x-portkey-vertex-region": "europe-west4"})
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                         default_headers={**default, **headers})


def assert_key_only_in_its_header(fake: FakeProvider) -> None:
    """The Gemini key goes in x-goog-api-key, never in the URL (where logs would keep it)."""
    for received in fake.requests:
        assert PROVIDER_SECRET not in received.path and PROVIDER_SECRET not in received.query
        assert "key=" not in received.query
        assert received.headers["x-goog-api-key"] == PROVIDER_SECRET
        assert "authorization" not in received.headers


def test_chat_through_the_gemini_api(gateway: Gateway, fake_provider: FakeProvider) -> None:
    completion = client(gateway, fake_provider).chat.completions.create(
        model="models/gemini-2.0-flash", max_tokens=100, temperature=0.2,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == GEMINI_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-2.0-flash"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    received = fake_provider.requests[-1]
    assert received.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert received.json() == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                               "systemInstruction": {"parts": [{"text": "Be brief."}]},
                               "generationConfig": {"temperature": 0.2, "maxOutputTokens": 100}}
    assert_key_only_in_its_header(fake_provider)


def test_dropped_parameters_are_logged_without_the_key(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client(gateway, fake_provider).chat.completions.create(
        model="gemini-2.0-flash", user="someone", messages=[{"role": "user", "content": "hi"}])
    assert "google: dropped parameters it does not take: user" in gateway.logs()
    assert PROVIDER_SECRET not in gateway.logs()


def test_streamed_chat_through_the_gemini_api(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider).chat.completions.create(
        model="gemini-2.0-flash", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GEMINI_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    received = fake_provider.requests[-1]
    assert (received.path, received.query) == ("/v1beta/models/gemini-2.0-flash:streamGenerateContent", "alt=sse")
    assert_key_only_in_its_header(fake_provider)


@pytest.mark.parametrize("provider", ["google", "vertex-ai"])
def test_a_tool_round_trip(gateway: Gateway, fake_provider: FakeProvider, provider: str) -> None:
    sdk = client(gateway, fake_provider, provider)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.chat.completions.create(model="gemini-2.0-flash", messages=messages, tools=TOOLS,
                                        extra_headers={"x-fake-tool-call": "get_weather"})
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "fake"})  # type: ignore[union-attr]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = sdk.chat.completions.create(model="gemini-2.0-flash", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == 'Fake gemini read get_weather: {"temp": 21}'
    sent = fake_provider.requests[-1].json()
    assert sent["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "fake"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}]
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_a_streamed_tool_call(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider).chat.completions.create(
        model="gemini-2.0-flash", stream=True, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS,
        tool_choice="required")
    calls = [call for c in stream if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        (0, "get_weather", '{"city":"fake"}')]


@pytest.mark.parametrize("provider", ["google", "vertex-ai"])
def test_embeddings_one_and_many(gateway: Gateway, fake_provider: FakeProvider, provider: str) -> None:
    sdk = client(gateway, fake_provider, provider)
    model = "gemini-embedding-001" if provider == "google" else "text-embedding-005"
    # The SDK asks for base64 by default and decodes it: the vectors come back as float32.
    one = sdk.embeddings.create(model=model, input="hello", dimensions=4)
    assert one.data[0].embedding == pytest.approx(_vector("hello", 4), abs=1e-6)
    many = sdk.embeddings.create(model=model, input=["a b", "c"], encoding_format="float")
    assert [d.embedding for d in many.data] == [_vector("a b", 8), _vector("c", 8)]
    paths = [r.path for r in fake_provider.requests]
    if provider == "google":
        assert paths == [f"/v1beta/models/{model}:embedContent", f"/v1beta/models/{model}:batchEmbedContents"]
        assert_key_only_in_its_header(fake_provider)
    else:
        assert paths == [f"{VERTEX_PATH}/{model}:predict"] * 2
        assert many.usage.prompt_tokens == 3
        assert all(r.headers["authorization"] == f"Bearer {PROVIDER_SECRET}" for r in fake_provider.requests)


def test_vertex_chat_and_stream_use_project_region_and_bearer(gateway: Gateway,
                                                              fake_provider: FakeProvider) -> None:
    sdk = client(gateway, fake_provider, "vertex-ai")
    completion = sdk.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == GEMINI_TEXT
    text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="gemini-2.0-flash", stream=True, messages=[{"role": "user", "content": "hi"}]) if c.choices)
    assert text == GEMINI_TEXT
    assert [(r.path, r.query) for r in fake_provider.requests] == [
        (f"{VERTEX_PATH}/gemini-2.0-flash:generateContent", ""),
        (f"{VERTEX_PATH}/gemini-2.0-flash:streamGenerateContent", "alt=sse")]
    assert all(r.headers["authorization"] == f"Bearer {PROVIDER_SECRET}" for r in fake_provider.requests)


@pytest.mark.parametrize(("missing", "header"), [("x-portkey-vertex-project-id", "x-portkey-vertex-project-id"),
                                                 ("x-portkey-vertex-region", "x-portkey-vertex-region")])
def test_vertex_without_its_options_is_a_bad_request(gateway: Gateway, fake_provider: FakeProvider, missing: str,
                                                     header: str) -> None:
    sdk = client(gateway, fake_provider, "vertex-ai")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}],
                                    extra_headers={missing: ""})
    assert header in str(refused.value)
    assert fake_provider.requests == []


def test_a_google_error_reaches_the_sdk_in_the_unified_shape(gateway: Gateway, fake_provider: FakeProvider) -> None:
    sdk = client(gateway, fake_provider).with_options(api_key="invalid-key")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body == {"message": "google error: API key not valid. Please pass a valid API key.",
                                  "type": "invalid_request_error", "param": None, "code": "INVALID_ARGUMENT"}


def test_a_blocked_prompt_is_a_content_filter(gateway: Gateway, fake_provider: FakeProvider) -> None:
    completion = client(gateway, fake_provider).chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-block": "SAFETY"})
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("", "content_filter")


def test_a_stream_that_breaks_ends_in_an_error_for_the_sdk(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider).chat.completions.create(
        model="gemini-2.0-flash", stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-stream-error": "1"})
    seen = []
    with pytest.raises(openai.APIError, match="google error: The model is overloaded"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content if chunk.choices else None)
    assert seen == ["Hello"]
