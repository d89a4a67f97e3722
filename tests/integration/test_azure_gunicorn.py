"""azure-openai through gunicorn: the openai SDK on the unified routes, and the anthropic SDK on /v1/messages."""

from __future__ import annotations

import anthropic
import openai

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import OPENAI_TEXT, FakeProvider
from tests.integration.conftest import Gateway

AZURE = {"x-portkey-provider": "azure-openai", "x-portkey-azure-resource-name": "my-resource",
         "x-portkey-azure-deployment-id": "gpt4o-prod", "x-portkey-azure-api-version": "2024-10-21"}


def headers(fake: FakeProvider) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-custom-host": f"{fake.url}/openai", **AZURE}


def test_openai_sdk_chat_stream_and_embeddings_reach_the_deployment(gateway: Gateway,
                                                                    fake_provider: FakeProvider) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=PROVIDER_SECRET, max_retries=0,
                           default_headers=headers(fake_provider))
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == OPENAI_TEXT
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2
    sent = fake_provider.requests
    assert [r.path for r in sent] == ["/openai/deployments/gpt4o-prod/chat/completions"] * 2 + [
        "/openai/deployments/gpt4o-prod/embeddings"]
    assert all(r.query == "api-version=2024-10-21" for r in sent)
    assert all(r.headers["api-key"] == PROVIDER_SECRET and "authorization" not in r.headers for r in sent)


def test_anthropic_sdk_on_messages_reaches_the_deployment(gateway: Gateway, fake_provider: FakeProvider) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=PROVIDER_SECRET, max_retries=0,
                                 default_headers=headers(fake_provider))
    message = client.messages.create(model="gpt-4o", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and message.content[0].text == OPENAI_TEXT
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    assert fake_provider.requests[-1].path == "/openai/deployments/gpt4o-prod/chat/completions"
