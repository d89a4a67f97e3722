"""A provider's error event that arrives in the same read as earlier events: those events still go out first.

The poller relay (app/server/relay.py) feeds a translator whatever one socket read holds, which can be several
HTTP chunks; a parser that raised on the error dropped the chunks it had completed before it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.translate.anthropic import CHAT as ANTHROPIC
from app.translate.base import CallFacts
from app.translate.call import StreamTransform
from app.translate.cohere import CHAT as COHERE
from app.translate.fronts import OpenAIStream
from app.translate.openai import CHAT as OPENAI

FACTS = CallFacts(provider="p", model="m", stream=True, id="chatcmpl-test", created=1700000000)


def sse(payload: dict, name: str | None = None) -> bytes:
    return (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(payload).encode() + b"\n\n"


CASES = {
    "openai": (OPENAI, sse({"choices": [{"index": 0, "delta": {"content": "Hello"}}]})
               + sse({"error": {"message": "overloaded", "type": "server_error"}})),
    "cohere": (COHERE, sse({"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}})
               + sse({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hello"}}}})
               + sse({"type": "error", "message": "overloaded"})),
    "anthropic": (ANTHROPIC, sse({"type": "message_start", "message": {"id": "x", "model": "m", "usage": {}}})
                  + sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
                  + sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})
                  + sse({"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}})),
}


def events_of(out: bytes) -> list[dict]:
    return [json.loads(block.removeprefix(b"data: ")) for block in out.split(b"\n\n") if block.startswith(b"data: {")]


@pytest.mark.parametrize("provider", CASES)
def test_events_before_an_error_in_the_same_read_go_out_before_it(provider: str) -> None:
    adapter, wire = CASES[provider]
    transform = StreamTransform(adapter.stream(replace(FACTS, provider=provider)), OpenAIStream(), provider, None)
    events = events_of(transform.feed(wire))
    assert transform.broken
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert text == "Hello"
    assert "overloaded" in events[-1]["error"]["message"]


def test_chunks_before_a_cut_stream_go_out_before_its_error() -> None:
    transform = StreamTransform(ANTHROPIC.stream(replace(FACTS, provider="anthropic")), OpenAIStream(), "anthropic",
                                None)
    started = CASES["anthropic"][1].rsplit(b"data: ", 1)[0]  # all but the error event
    unterminated = b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}'
    assert transform.feed(started + unterminated)
    events = events_of(transform.finish())  # the end completes the last event, and finds no message_stop
    assert [e["choices"][0]["delta"]["content"] for e in events if e.get("choices")] == ["!"]
    assert "ended before message_stop" in events[-1]["error"]["message"]
