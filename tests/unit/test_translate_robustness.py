"""Odd provider answers never become a 500: a whole answer is translated or refused as a 502, a stream ends in an
error event at worst. Random JSON built from the providers' own field names, seeded so a failure repeats."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from app.call.answer import Answer
from app.errors import BadRequest, UpstreamUnreachable
from app.providers.registry import PROVIDERS
from app.translate import OPENAI_CHAT, _load
from app.translate.base import CallFacts
from app.translate.call import StreamTransform, Translator
from app.translate.fronts import OpenAIFront, OpenAIStream
from app.translate.messages import FRONT as MESSAGES_FRONT

# Field names the adapters read, so random answers reach deep into their code.
NAMES = ("id", "model", "type", "role", "content", "text", "choices", "message", "delta", "index", "finish_reason",
         "usage", "tool_calls", "function", "name", "arguments", "input", "stop_reason", "candidates", "parts",
         "functionCall", "args", "finishReason", "usageMetadata", "promptTokenCount", "candidatesTokenCount",
         "output", "toolUse", "toolUseId", "stopReason", "inputTokens", "outputTokens", "embedding", "embeddings",
         "float", "values", "predictions", "data", "meta", "billed_units", "input_tokens", "output_tokens",
         "tool_use", "thinking", "content_block", "error", "event", "contentBlockDelta", "start", "stop", "signature")
FACTS = CallFacts(provider="p", model="m", stream=False, id="chatcmpl-x", created=1, strict=False,
                  options={"vertex_project_id": "proj", "vertex_region": "us-central1", "aws_region": "us-east-1"})
# Field names and values of client bodies (OpenAI's and Anthropic's), for odd requests.
REQUEST_NAMES = ("model", "messages", "role", "content", "type", "text", "image_url", "url", "tools", "function",
                 "name", "parameters", "tool_choice", "tool_calls", "id", "arguments", "tool_call_id",
                 "response_format", "json_schema", "schema", "stop", "max_tokens", "temperature", "n", "input",
                 "stream", "system", "tool_use", "tool_result", "source", "data", "media_type", "input_schema",
                 "stop_sequences", "metadata", "dimensions", "encoding_format", "input_type", "reasoning_effort",
                 "parallel_tool_calls", "functions", "function_call", "top_k", "seed", "thinking")
REQUEST_VALUES = (None, True, 0, -1, 3.5, "", "x", "user", "assistant", "tool", "system", "text", "image_url",
                  "data:image/png;base64,AAAA", "auto", "required", "json_schema", "json_object", "function")


ANSWER_VALUES = (None, True, 0, -1, 3.5, "", "x", "stop", "tool_use", "STOP", "end_turn", "{", "[]")


def odd_value(rng: random.Random, depth: int = 0, names: tuple[str, ...] = NAMES,
              values: tuple[Any, ...] = ANSWER_VALUES) -> Any:
    """Return a random JSON value, mostly objects keyed by the given field names."""
    kind = rng.random()
    if depth > 4 or kind < 0.25:
        return rng.choice(values)
    if kind < 0.45:
        return [odd_value(rng, depth + 1, names, values) for _ in range(rng.randint(0, 3))]
    return {rng.choice(names): odd_value(rng, depth + 1, names, values) for _ in range(rng.randint(0, 6))}


ADAPTER_NAMES = sorted({name for p in PROVIDERS.values() for name in p.adapters.values()} | {OPENAI_CHAT})


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_an_odd_whole_answer_is_translated_or_refused_as_a_bad_gateway(name: str) -> None:
    rng = random.Random(name)
    adapter = _load(name)
    for _ in range(400):
        body = json.dumps(odd_value(rng)).encode()
        translator = Translator(adapter, OpenAIFront("chatComplete"), FACTS)
        try:
            answer = translator.answer(Answer.whole(200, body, [("Content-Type", "application/json")]))
        except UpstreamUnreachable:
            continue
        assert answer.status == 200 and isinstance(json.loads(answer.first_chunk), dict)


@pytest.mark.parametrize("name", [n for n in ADAPTER_NAMES if hasattr(_load(n), "stream")])
def test_an_odd_stream_ends_in_chunks_or_one_error_event(name: str) -> None:
    rng = random.Random(name)
    adapter = _load(name)
    for _ in range(200):
        transform = StreamTransform(adapter.stream(FACTS), OpenAIStream(), "p", None)
        events = b"".join(b"data: " + json.dumps(odd_value(rng)).encode() + b"\n\n" for _ in range(rng.randint(1, 5)))
        out = b"".join(transform.feed(events[i:i + 7]) for i in range(0, len(events), 7)) + transform.finish()
        payloads = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
        errors = [p for p in payloads if isinstance(p.get("error"), dict) and set(p) == {"error"}]
        assert len(errors) <= 1 and (not errors or payloads[-1] is errors[0])
        assert out.endswith(b"data: [DONE]\n\n") != bool(errors)


@pytest.mark.parametrize("name", [*ADAPTER_NAMES, "messages front"])
def test_an_odd_request_is_translated_or_refused_with_a_400(name: str) -> None:
    rng = random.Random(name)
    for _ in range(2000):
        body = odd_value(rng, names=REQUEST_NAMES, values=REQUEST_VALUES)
        body = body if isinstance(body, dict) else {"messages": body}
        try:
            if name == "messages front":
                MESSAGES_FRONT.request(body)
            else:
                _load(name).request(body, FACTS)
        except BadRequest:
            continue
