"""Cohere v2 behind the real gunicorn: the openai SDK unchanged, the fake Cohere API on the other side.

The custom host is `<fake>/v1`, Cohere's own base URL style, so /v2/chat and /v2/embed must
resolve to the host's root.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.fake_cohere import COHERE_TEXT, MISSING_MODEL
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway

MODEL = "command-a-03-2025"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def client(gateway: Gateway, fake: FakeProvider, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                         default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
                                          "x-portkey-custom-host": f"{fake.url}/v1", **headers})


def sent(fake: FakeProvider, index: int = -1) -> dict[str, Any]:
    request = fake.requests[index]
    assert request.headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
    return request.json()  # type: ignore[no-any-return]


def test_chat(gateway: Gateway, fake_provider: FakeProvider) -> None:
    completion = client(gateway, fake_provider).chat.completions.create(
        model=MODEL, temperature=0.5, top_p=1, max_tokens=50, seed=3,
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == COHERE_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.usage is not None and completion.usage.completion_tokens == len(COHERE_TEXT.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert fake_provider.requests[-1].path == "/v2/chat"
    assert sent(fake_provider) == {
        "model": MODEL, "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}],
        "temperature": 0.5, "p": 0.99, "max_tokens": 50, "seed": 3}


def test_chat_length_and_stop(gateway: Gateway, fake_provider: FakeProvider) -> None:
    chat = client(gateway, fake_provider).chat.completions
    short = chat.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("Hello from", "length")
    stopped = chat.create(model=MODEL, stop=["fake"], messages=[{"role": "user", "content": "hi"}])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("Hello from ", "stop")


def test_chat_image_and_json_mode(gateway: Gateway, fake_provider: FakeProvider) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    completion = client(gateway, fake_provider).chat.completions.create(
        model="command-a-vision-07-2025", response_format={"type": "json_object"},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Describe as JSON"}, image]}])
    assert json.loads(completion.choices[0].message.content or "") == {"answer": COHERE_TEXT}
    assert sent(fake_provider)["messages"][0]["content"][1] == image


def test_chat_stream(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider, **{"x-fake-events": "4", "x-portkey-forward-headers": "x-fake-events"}) \
        .chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                 messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from fake stream"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert sent(fake_provider)["stream"] is True


def test_tools_round_trip(gateway: Gateway, fake_provider: FakeProvider) -> None:
    chat = client(gateway, fake_provider).chat.completions
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = chat.create(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "fake"})
    assert sent(fake_provider)["tool_choice"] == "REQUIRED"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"}]
    second = chat.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "The tool said: {\"temp\": 21}"
    assert second.choices[0].finish_reason == "stop"
    native = sent(fake_provider)["messages"]
    assert native[1] == {"role": "assistant", "tool_plan": "I will use the get_weather tool.", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]}
    assert native[2] == {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"}


def test_streamed_tool_call_named_by_the_control_header(gateway: Gateway, fake_provider: FakeProvider) -> None:
    headers = {"x-fake-tool-call": "get_weather", "x-portkey-forward-headers": "x-fake-tool-call"}
    stream = client(gateway, fake_provider, **headers).chat.completions.create(
        model=MODEL, stream=True, tools=[WEATHER], messages=[{"role": "user", "content": "Weather?"}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for item in stream:
        if not item.choices:
            continue
        finish = item.choices[0].finish_reason or finish
        for delta in item.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name or "") if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"].startswith("get_weather_")
    assert (calls[0]["name"], json.loads(calls[0]["arguments"])) == ("get_weather", {"city": "fake"})


def test_named_tool_choice_sends_that_tool_alone(gateway: Gateway, fake_provider: FakeProvider) -> None:
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    completion = client(gateway, fake_provider).chat.completions.create(
        model=MODEL, tools=[WEATHER, clock], tool_choice={"type": "function", "function": {"name": "get_time"}},
        messages=[{"role": "user", "content": "Time?"}])
    assert completion.choices[0].message.tool_calls[0].function.name == "get_time"  # type: ignore[index]
    assert [t["function"]["name"] for t in sent(fake_provider)["tools"]] == ["get_time"]


def test_embeddings(gateway: Gateway, fake_provider: FakeProvider) -> None:
    embeddings = client(gateway, fake_provider).embeddings
    default = embeddings.create(model="embed-v4.0", input=["hello", "goodbye"])  # the SDK asks for base64
    assert [len(d.embedding) for d in default.data] == [1536, 1536]
    assert all(-1 <= x <= 1 for x in default.data[0].embedding)
    assert default.usage.prompt_tokens > 0 and default.model == "embed-v4.0"
    assert sent(fake_provider) == {"model": "embed-v4.0", "texts": ["hello", "goodbye"],
                                   "input_type": "search_document", "embedding_types": ["base64"]}
    assert fake_provider.requests[-1].path == "/v2/embed"
    floats = embeddings.create(model="embed-v4.0", input="hello", dimensions=256, encoding_format="float",
                               extra_body={"input_type": "search_query"})
    assert len(floats.data) == 1 and len(floats.data[0].embedding) == 256
    assert floats.data[0].embedding == pytest.approx(default.data[0].embedding[:256], abs=1e-6)
    assert sent(fake_provider) == {"model": "embed-v4.0", "texts": ["hello"], "input_type": "search_query",
                                   "embedding_types": ["float"], "output_dimension": 256}


def test_cohere_refusals_reach_the_client_unified(gateway: Gateway, fake_provider: FakeProvider) -> None:
    chat = client(gateway, fake_provider).chat.completions
    with pytest.raises(openai.BadRequestError) as err:
        chat.create(model=MODEL, temperature=1.5, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body == {"message": "cohere error: invalid request: temperature must be between 0 and 1.0 "
                                         "inclusive.", "type": "invalid_request_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as err:
        chat.create(model=MODEL, messages=[{"role": "user", "content": "hi"}, {"role": "tool", "content": "r"}])
    assert err.value.status_code == 400
    assert err.value.message.endswith("cohere error: tool call id must be provided with tool message")
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway, fake_provider).embeddings.create(model="embed-v4.0", input="x", dimensions=100)
    assert "cohere error: invalid request: output_dimension must be one of" in err.value.message


def test_gateway_refusals(gateway: Gateway, fake_provider: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway, fake_provider).chat.completions.create(
            model=MODEL, n=2, messages=[{"role": "user", "content": "hi"}])
    assert "n: cohere answers with one choice only" in err.value.message
    assert fake_provider.requests == []


def test_stream_error_event_reaches_the_sdk(gateway: Gateway, fake_provider: FakeProvider) -> None:
    headers = {"x-fake-stream-error": "model overloaded", "x-portkey-forward-headers": "x-fake-stream-error"}
    stream = client(gateway, fake_provider, **headers).chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "hi"}])
    received = []
    with pytest.raises(openai.APIError, match="cohere error: model overloaded"):
        for item in stream:
            received.append(item)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "Hello"


# --------------------------------------------------------------------------- the fake refuses as Cohere does

AUTH = {"Authorization": "Bearer co-test"}
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
EMBED_BODY = {"model": "embed-english-v3.0", "texts": ["hi"], "input_type": "search_query",
              "embedding_types": ["float"]}


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), [
    ("/v2/chat", CHAT_BODY, {}, 401, "no api key supplied"),
    ("/v2/chat", {"messages": CHAT_BODY["messages"]}, AUTH, 400, MISSING_MODEL),
    ("/v2/chat", {"model": MODEL}, AUTH, 400, "invalid request: messages must contain at least one message"),
    ("/v2/chat", {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, AUTH, 400,
     "invalid request: invalid role 'bot' in messages at index 0. Role must be one of the following: "
     "user, assistant, system, tool"),
    ("/v2/chat", {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, AUTH, 400,
     "tool call id must be provided with tool message"),
    ("/v2/chat", {"model": MODEL, "messages": [{"role": "tool", "tool_call_id": "c1", "content": "x"}]}, AUTH, 400,
     "tool call id not found in previous tool calls"),
    ("/v2/chat", {**CHAT_BODY, "top_p": 0.5}, AUTH, 400, "invalid request: unknown field 'top_p'"),
    ("/v2/chat", {**CHAT_BODY, "tool_choice": "REQUIRED"}, AUTH, 400,
     "invalid request: tool_choice REQUIRED needs tools to be specified"),
    ("/v2/embed", {**EMBED_BODY, "model": ""}, AUTH, 400, MISSING_MODEL),
    ("/v2/embed", {k: v for k, v in EMBED_BODY.items() if k != "input_type"}, AUTH, 400,
     "invalid request: valid input_type must be provided with the provided model"),
    ("/v2/embed", {k: v for k, v in EMBED_BODY.items() if k != "embedding_types"}, AUTH, 400,
     "embedding_types parameter is required"),
    ("/v2/embed", {**EMBED_BODY, "embedding_types": ["double"]}, AUTH, 400,
     "invalid request: embedding_types must be a list of float, int8, uint8, binary, ubinary, base64"),
    ("/v2/embed", {**EMBED_BODY, "texts": ["ok", ""]}, AUTH, 400,
     "invalid request: inputs contains an element that is the empty string at index 1"),
])
def test_fake_refuses_as_cohere(fake_provider: FakeProvider, path: str, body: dict[str, Any],
                                headers: dict[str, str], status: int, message: str) -> None:
    answer = requests.post(fake_provider.url + path, json=body, headers=headers, timeout=5)
    assert answer.status_code == status
    assert answer.json()["message"] == message
    assert set(answer.json()) == {"id", "message"}


def test_fake_takes_v2_embedding_models_without_input_type(fake_provider: FakeProvider) -> None:
    body = {"model": "embed-english-v2.0", "texts": ["hi"], "embedding_types": ["float", "int8"]}
    answer = requests.post(fake_provider.url + "/v2/embed", json=body, headers=AUTH, timeout=5).json()
    assert [len(answer["embeddings"]["float"][0]), len(answer["embeddings"]["int8"][0])] == [1024, 1024]
    assert answer["meta"]["billed_units"]["input_tokens"] >= 1
