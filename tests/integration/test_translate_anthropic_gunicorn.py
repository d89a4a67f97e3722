"""The openai SDK, unchanged, against /v1/chat/completions with the anthropic provider: gunicorn, then the fake."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import ANTHROPIC_TEXT, OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def client(gateway: Gateway, fake: FakeProvider, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0, timeout=20,
                         default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "anthropic",
                                          "x-portkey-custom-host": f"{fake.url}/v1", **headers})


def sent(fake: FakeProvider, index: int = -1) -> dict[str, Any]:
    request = fake.requests[index]
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == PROVIDER_SECRET and "authorization" not in request.headers
    return request.json()


def test_chat(gateway: Gateway, fake_provider: FakeProvider) -> None:
    completion = client(gateway, fake_provider).chat.completions.create(
        model="claude-sonnet-4-5", messages=QUESTION, temperature=0.3, stop=["END"], user="u-1")
    assert completion.object == "chat.completion" and completion.id.startswith("msg_")
    assert completion.choices[0].message.content == ANTHROPIC_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens) > 0
    assert sent(fake_provider) == {"model": "claude-sonnet-4-5", "max_tokens": 4096, "system": "Be brief.",
                                   "messages": [{"role": "user", "content": "Weather in Paris?"}],
                                   "temperature": 0.3, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}}


def test_stream(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider).chat.completions.create(
        model="claude-sonnet-4-5", messages=QUESTION, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from fake"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert sent(fake_provider)["stream"] is True


def test_tool_round_trip(gateway: Gateway, fake_provider: FakeProvider) -> None:
    api = client(gateway, fake_provider)
    first = api.chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION, tools=[WEATHER],
                                        tool_choice="required", parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("toolu_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "fake"}
    assert sent(fake_provider)["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    history = [*QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "18C and cloudy"}]
    second = api.chat.completions.create(model="claude-sonnet-4-5", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == ANTHROPIC_TEXT
    assert sent(fake_provider)["messages"][1:] == [  # the fake checks the pairing, as Anthropic does
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "get_weather",
                                           "input": {"city": "fake"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and cloudy"}]}]


def test_streamed_tool_call(gateway: Gateway, fake_provider: FakeProvider) -> None:
    api = client(gateway, fake_provider, **{"x-fake-tool-call": "get_weather",
                                             "x-portkey-forward-headers": "x-fake-tool-call"})
    chunks = list(api.chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION, tools=[WEATHER],
                                              stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "I will call get_weather."
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert all(call.index == 0 for call in calls) and all(call.id is None for call in calls[1:])
    assert json.loads("".join(call.function.arguments or "" for call in calls)) == {"city": "fake"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_thinking_rides_along_when_not_strict(gateway: Gateway, fake_provider: FakeProvider) -> None:
    api = client(gateway, fake_provider, **{"x-portkey-strict-open-ai-compliance": "false"})
    completion = api.chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION, max_tokens=2048,
                                             extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    message = completion.choices[0].message.model_dump()
    assert message["content"] == ANTHROPIC_TEXT
    assert [block["type"] for block in message["content_blocks"]] == ["thinking", "text"]
    strict = client(gateway, fake_provider).chat.completions.create(
        model="claude-sonnet-4-5", messages=QUESTION, max_tokens=2048,
        extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert "content_blocks" not in strict.choices[0].message.model_dump()


def test_anthropic_error_in_the_unified_shape(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(status=529, body=OVERLOADED)
    with pytest.raises(openai.APIStatusError) as failed:
        client(gateway, fake_provider).chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION)
    assert failed.value.status_code == 529
    assert failed.value.body == {"message": "anthropic error: Overloaded", "type": "api_error", "param": None,
                                 "code": "overloaded_error"}


def test_fallback_from_anthropic_to_openai(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(status=529, body=OVERLOADED)
    host = f"{fake_provider.url}/v1"
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "anthropic", "custom_host": host},
        {"provider": "openai", "custom_host": host, "override_params": {"model": "gpt-4o-mini"}}]}
    api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0, timeout=20,
                        default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config)})
    raw = api.chat.completions.with_raw_response.create(model="claude-sonnet-4-5", messages=QUESTION)
    completion = raw.parse()
    assert raw.headers["x-portkey-last-used-option-index"] == "config.targets[1]"
    assert completion.choices[0].message.content == OPENAI_TEXT
    assert [r.path for r in fake_provider.requests] == ["/v1/messages", "/v1/chat/completions"]
    assert fake_provider.requests[1].json()["model"] == "gpt-4o-mini"
    # The same unified shape whichever provider answered.
    direct = client(gateway, fake_provider).chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION)
    for answer in (completion, direct):
        assert answer.object == "chat.completion" and answer.choices[0].finish_reason == "stop"
        assert answer.choices[0].message.role == "assistant" and answer.usage is not None


def test_mid_stream_error_raises_in_the_sdk(gateway: Gateway, fake_provider: FakeProvider) -> None:
    api = client(gateway, fake_provider, **{"x-fake-stream-error": "overloaded",
                                             "x-portkey-forward-headers": "x-fake-stream-error"})
    stream = api.chat.completions.create(model="claude-sonnet-4-5", messages=QUESTION, stream=True)
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello"]
    assert failed.value.message == "anthropic error: Overloaded"
    assert failed.value.body == {"message": "anthropic error: Overloaded", "type": "api_error", "param": None,
                                 "code": "overloaded_error"}
