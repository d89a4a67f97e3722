"""/v1/messages with any provider: the anthropic SDK, unchanged, through gunicorn to OpenAI or to Anthropic."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import ANTHROPIC_TEXT, OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway

WEATHER = {"name": "weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TEXTS = {"openai": OPENAI_TEXT, "anthropic": ANTHROPIC_TEXT}
STREAM_TEXT = "Hello from fake"  # the fake streams three pieces unless told otherwise


def client(gateway: Gateway, fake: FakeProvider, provider: str = "openai") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=PROVIDER_SECRET, max_retries=0,
                               default_headers={"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": provider,
                                                "x-portkey-custom-host": f"{fake.url}/v1"})


def sse(chunks: list[dict[str, Any]]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-t1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_same_create_call_works_for_both_providers(gateway: Gateway, fake_provider: FakeProvider,
                                                       provider: str) -> None:
    message = client(gateway, fake_provider, provider).messages.create(
        model="some-model", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].type == "text" and message.content[0].text == TEXTS[provider]
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = fake_provider.requests[-1]
    if provider == "openai":
        assert message.usage.output_tokens == len(OPENAI_TEXT.split())  # the fake's completion_tokens
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {PROVIDER_SECRET}"
        assert sent.json() == {"model": "some-model", "max_tokens": 64, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    else:
        assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == PROVIDER_SECRET


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_same_stream_call_works_for_both_providers(gateway: Gateway, fake_provider: FakeProvider,
                                                       provider: str) -> None:
    with client(gateway, fake_provider, provider).messages.stream(
            model="some-model", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == STREAM_TEXT
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    if provider == "openai":
        assert final.usage.output_tokens == 3  # the fake's completion_tokens: one per streamed piece
        assert fake_provider.requests[-1].json()["stream_options"] == {"include_usage": True}


def test_raw_stream_events_arrive_in_anthropic_order(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = client(gateway, fake_provider).messages.create(
        model="gpt-4o-mini", max_tokens=64, stream=True, messages=[{"role": "user", "content": "hi"}])
    kinds = [event.type for event in stream]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


def test_a_tool_round_trip_through_openai(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(body={
        "id": "chatcmpl-tools1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [
                {"id": "call_w1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}})
    sdk = client(gateway, fake_provider)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = sdk.messages.create(model="gpt-4o-mini", max_tokens=64, messages=[question], tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True})
    assert first.id == "msg_tools1" and first.stop_reason == "tool_use"
    call = first.content[0]
    assert isinstance(call, anthropic.types.ToolUseBlock)
    assert (call.id, call.name, call.input) == ("call_w1", "weather", {"city": "Paris"})
    assert (first.usage.input_tokens, first.usage.output_tokens) == (50, 9)
    sent = fake_provider.requests[-1].json()
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Weather of a city", "parameters": WEATHER["input_schema"]}}]

    second = sdk.messages.create(model="gpt-4o-mini", max_tokens=64, tools=[WEATHER], messages=[
        question, first.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}]}])
    assert second.content[0].type == "text" and second.content[0].text == OPENAI_TEXT
    assert fake_provider.requests[-1].json()["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C, sunny"}]


def test_a_streamed_tool_call_parses_in_the_sdk(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(headers={"Content-Type": "text/event-stream"}, body=sse([
        chunk({"role": "assistant", "content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_s1", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chunk({}, "tool_calls"),
        {"id": "chatcmpl-t1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
         "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52,
                                  "prompt_tokens_details": {"cached_tokens": 32}}}]))
    with client(gateway, fake_provider).messages.stream(
            model="gpt-4o-mini", max_tokens=64, tools=[WEATHER],
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert final.id == "msg_t1" and final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].type == "text" and final.content[0].text == "Checking."
    call = final.content[1]
    assert isinstance(call, anthropic.types.ToolUseBlock)
    assert (call.id, call.name, call.input) == ("call_s1", "weather", {"city": "Paris"})
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens) == (8, 12, 32)


def test_a_provider_error_is_an_anthropic_error(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(status=429, body={"error": {"message": "Rate limit reached", "type": "requests",
                                                      "param": None, "code": "rate_limit_exceeded"}})
    with pytest.raises(anthropic.RateLimitError) as caught:
        client(gateway, fake_provider).messages.create(model="gpt-4o-mini", max_tokens=64,
                                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.body == {"type": "error", "error": {"type": "rate_limit_error",
                                                           "message": "openai error: Rate limit reached"}}


def test_an_error_mid_stream_raises_in_the_sdk(gateway: Gateway, fake_provider: FakeProvider) -> None:
    fake_provider.enqueue(headers={"Content-Type": "text/event-stream"}, body=sse([
        chunk({"role": "assistant", "content": "Hel"}),
        {"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}]))
    with pytest.raises(anthropic.APIStatusError) as caught, client(gateway, fake_provider).messages.stream(
            model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        "".join(stream.text_stream)
    assert caught.value.body == {"type": "error", "error": {"type": "api_error",
                                                           "message": "openai error: The server had an error"}}


def test_a_missing_max_tokens_is_refused_before_the_provider(gateway: Gateway, fake_provider: FakeProvider) -> None:
    answer = requests.post(f"{gateway.url}/v1/messages", timeout=10, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai", "x-api-key": PROVIDER_SECRET,
        "x-portkey-custom-host": f"{fake_provider.url}/v1"})
    assert answer.status_code == 400
    assert answer.json()["message"] == "max_tokens: Field required"
    assert fake_provider.requests == []
