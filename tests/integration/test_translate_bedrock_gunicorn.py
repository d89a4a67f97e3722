"""Bedrock through the real gunicorn: the openai SDK on the unified routes, the fake verifying every signature."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import GATEWAY_KEY
from tests.fakes import fake_bedrock
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway

ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
ARN_PATH = ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def bedrock_client(gateway: Gateway, fake: FakeProvider, **extra: str) -> openai.OpenAI:
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "bedrock",
               "x-portkey-custom-host": fake.url, "x-portkey-aws-region": "us-east-1",
               "x-portkey-aws-access-key-id": fake_bedrock.ACCESS_KEY,
               "x-portkey-aws-secret-access-key": fake_bedrock.SECRET_KEY, **extra}
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, default_headers=headers)


def signed_by_the_gateway(fake: FakeProvider, access_key: str = fake_bedrock.ACCESS_KEY) -> None:
    """Every request the fake got carried a SigV4 signature (which it verified before answering 2xx)."""
    assert fake.requests
    for request in fake.requests:
        assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={access_key}/")
        assert "/us-east-1/bedrock/aws4_request" in request.headers["authorization"]


def test_chat_with_an_inference_profile_arn(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider)
    completion = client.chat.completions.create(
        model=ARN, max_tokens=100, temperature=0.5, stop=["zzz"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == fake_bedrock.BEDROCK_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4
    sent = fake_provider.requests[-1]
    assert sent.path == ARN_PATH
    assert sent.json() == {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                           "system": [{"text": "Be brief."}],
                           "inferenceConfig": {"maxTokens": 100, "temperature": 0.5, "stopSequences": ["zzz"]}}
    signed_by_the_gateway(fake_provider)
    assert fake_bedrock.SECRET_KEY not in gateway.logs()


def test_max_tokens_gives_finish_reason_length(gateway: Gateway, fake_provider: FakeProvider) -> None:
    completion = bedrock_client(gateway, fake_provider).chat.completions.create(
        model="amazon.nova-lite-v1:0", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("Hello from", "length")


def test_stream(gateway: Gateway, fake_provider: FakeProvider) -> None:
    stream = bedrock_client(gateway, fake_provider).chat.completions.create(
        model="anthropic.claude-3-5-haiku-20241022-v1:0", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_bedrock.BEDROCK_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake_provider.requests[-1].path == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    signed_by_the_gateway(fake_provider)


def test_stream_exception_frame_reaches_the_client_as_an_error(gateway: Gateway,
                                                               fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider, **{"x-fake-stream-error": "throttling",
                                                       "x-portkey-forward-headers": "x-fake-stream-error"})
    stream = client.chat.completions.create(model="amazon.nova-lite-v1:0", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content if chunk.choices else None)
    assert "Too many requests" in caught.value.message
    assert "Hello" in received  # what came before the exception frame was delivered


def test_tools_round_trip(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=ARN, messages=messages, tools=[WEATHER], tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "fake city"})
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = client.chat.completions.create(model=ARN, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"
    sent = fake_provider.requests[-1].json()
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "fake city"}}}]}
    assert sent["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "18C and sunny"}]}}]}
    signed_by_the_gateway(fake_provider)


def test_streamed_tool_call(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider, **{"x-fake-tool-call": "get_weather",
                                                       "x-portkey-forward-headers": "x-fake-tool-call"})
    stream = client.chat.completions.create(model=ARN, stream=True, tools=[WEATHER],
                                            messages=[{"role": "user", "content": "Weather?"}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            entry["name"] += (delta.function.name or "") if delta.function else ""
            entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("tooluse_")
    assert json.loads(calls[0]["arguments"]) == {"city": "fake city"}


def test_upstream_validation_error_is_unified(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="amazon.nova-lite-v1:0",
                                       messages=[{"role": "assistant", "content": "I start"}])
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["message"].startswith("bedrock error: A conversation must start with a user message")
    assert (error["type"], error["code"]) == ("invalid_request_error", "ValidationException")


def test_gateway_refusals_are_400_before_any_call(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider)
    with pytest.raises(openai.BadRequestError, match="n > 1 is not supported"):
        client.chat.completions.create(model="m", n=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="cannot fetch https URLs"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    no_key = bedrock_client(gateway, fake_provider, **{"x-portkey-aws-access-key-id": ""})
    with pytest.raises(openai.BadRequestError, match="x-portkey-aws-access-key-id"):
        no_key.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert fake_provider.requests == []


def test_session_token(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider, **{
        "x-portkey-aws-access-key-id": fake_bedrock.TEMP_ACCESS_KEY,
        "x-portkey-aws-secret-access-key": fake_bedrock.TEMP_SECRET_KEY,
        "x-portkey-aws-session-token": fake_bedrock.SESSION_TOKEN})
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == fake_bedrock.BEDROCK_TEXT
    signed_by_the_gateway(fake_provider, fake_bedrock.TEMP_ACCESS_KEY)
    assert fake_provider.requests[-1].headers["x-amz-security-token"] == fake_bedrock.SESSION_TOKEN


def test_embeddings_titan_and_cohere(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider)
    titan = client.embeddings.create(model="amazon.titan-embed-text-v2:0", input="hello", dimensions=256)
    assert len(titan.data) == 1 and len(titan.data[0].embedding) == 256
    assert titan.usage is not None and titan.usage.prompt_tokens >= 1
    assert fake_provider.requests[-1].json() == {"inputText": "hello", "dimensions": 256}
    cohere = client.embeddings.create(model="cohere.embed-english-v3", input=["a", "b"])
    assert [item.index for item in cohere.data] == [0, 1] and len(cohere.data[1].embedding) == 1024
    assert fake_provider.requests[-1].json() == {"texts": ["a", "b"], "input_type": "search_document"}
    assert fake_provider.requests[-1].path == "/model/cohere.embed-english-v3/invoke"
    with pytest.raises(openai.BadRequestError, match="one text per call"):
        client.embeddings.create(model="amazon.titan-embed-text-v2:0", input=["a", "b"])
    signed_by_the_gateway(fake_provider)


def test_wrong_secret_is_the_providers_403_unified(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = bedrock_client(gateway, fake_provider, **{"x-portkey-aws-secret-access-key": "wrong-secret"})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "InvalidSignatureException"
    assert "wrong-secret" not in json.dumps(caught.value.body)


def test_anthropic_messages_route_bridges_to_converse(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, default_headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "bedrock", "x-portkey-custom-host": fake_provider.url,
        "x-portkey-aws-region": "us-east-1", "x-portkey-aws-access-key-id": fake_bedrock.ACCESS_KEY,
        "x-portkey-aws-secret-access-key": fake_bedrock.SECRET_KEY})
    message = client.messages.create(model="anthropic.claude-3-haiku-20240307-v1:0", max_tokens=50, system="Be nice.",
                                     messages=[{"role": "user", "content": "hi"}])
    assert [block.text for block in message.content if block.type == "text"] == [fake_bedrock.BEDROCK_TEXT]
    assert fake_provider.requests[-1].json() == {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                                                 "system": [{"text": "Be nice."}],
                                                 "inferenceConfig": {"maxTokens": 50}}
    signed_by_the_gateway(fake_provider)
