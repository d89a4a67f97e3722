"""Claude on Vertex AI through gunicorn: the openai SDK on /v1/chat/completions, the anthropic SDK on /v1/messages."""

from __future__ import annotations

import anthropic
import openai

from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import ANTHROPIC_TEXT, FakeProvider
from tests.integration.conftest import Gateway

MODEL = "claude-sonnet-4-5@20250929"
PATH = f"/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/{MODEL}"


def headers(fake: FakeProvider) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "vertex-ai", "x-portkey-custom-host": fake.url,
            "x-portkey-vertex-project-id": "my-proj", "x-portkey-vertex-region": "us-east5"}


def test_openai_sdk_chat_and_stream_reach_claude_on_vertex(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="ya29.oauth-token", max_retries=0,
                           default_headers=headers(fake_provider))
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == ANTHROPIC_TEXT and answer.usage is not None
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    sent = fake_provider.requests
    assert [r.path for r in sent] == [f"{PATH}:rawPredict", f"{PATH}:streamRawPredict"]
    assert all(r.headers["authorization"] == "Bearer ya29.oauth-token" for r in sent)
    assert all("model" not in r.json() and r.json()["anthropic_version"] == "vertex-2023-10-16" for r in sent)


def test_openai_sdk_tool_call_from_claude_on_vertex(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="ya29.oauth-token", max_retries=0,
                           default_headers=headers(fake_provider))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "weather?"}],
                                            tools=[tool], tool_choice="required")
    call = answer.choices[0].message.tool_calls[0]
    assert answer.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"


def test_anthropic_sdk_on_messages_reaches_claude_on_vertex(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="ya29.oauth-token", max_retries=0,
                                 default_headers=headers(fake_provider))
    message = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and message.content[0].text == ANTHROPIC_TEXT
    assert fake_provider.requests[-1].path == f"{PATH}:rawPredict"
