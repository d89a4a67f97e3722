"""A translated answer reports its usage as data; the byte tap reads only answers relayed as they came.

Each provider's answer is translated, whole and streamed, and the usage the answer carries is compared with
what the byte tap reads from the same translated bytes (what the gateway recorded before), and with the
provider's own numbers written out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pytest

from app.call.answer import Answer, Relay
from app.call.context import RequestContext
from app.observe import CallObserver
from app.translate import anthropic, bedrock, cohere, gemini, vertex
from app.translate.base import CallFacts
from app.translate.call import Translator
from app.translate.fronts import Front, OpenAIFront
from app.translate.messages import FRONT as MESSAGES
from app.usage import PricingTable, Usage, UsageTap
from tests.fakes.fake_bedrock import event_frame

CHAT = OpenAIFront("chatComplete")


def sse(*events: dict[str, Any], named: bool = True) -> bytes:
    """Return server-sent events, named by their `type` (Anthropic, Cohere) or data only (Gemini)."""
    return b"".join((f"event: {e['type']}\n" if named else "").encode() + b"data: " + json.dumps(e).encode() + b"\n\n"
                    for e in events)


ANTHROPIC_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,
                   "output_tokens": 5}
ANTHROPIC_WHOLE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                   "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "end_turn",
                   "usage": ANTHROPIC_USAGE}
ANTHROPIC_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                          "model": "claude-sonnet-4-5-20250929", "content": [],
                                          "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
    {"type": "message_stop"})
CLAUDE = Usage(model="claude-sonnet-4-5-20250929", input_tokens=130, output_tokens=5, cache_read_tokens=100,
               cache_write_tokens=20)

COHERE_USAGE = {"billed_units": {"input_tokens": 7, "output_tokens": 3}, "tokens": {"input_tokens": 70,
                                                                                      "output_tokens": 3}}
COHERE_WHOLE = {"id": "c1", "finish_reason": "COMPLETE", "usage": COHERE_USAGE,
                "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi there"}]}}
COHERE_STREAM = sse(
    {"type": "message-start", "id": "c1", "delta": {"message": {"role": "assistant"}}},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi there"}}}},
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": COHERE_USAGE}})

GEMINI_USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 4, "cachedContentTokenCount": 8,
                "thoughtsTokenCount": 2}
GEMINI_WHOLE = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi there"}]}, "finishReason": "STOP"}],
                "usageMetadata": GEMINI_USAGE, "modelVersion": "gemini-2.5-flash-001"}
GEMINI_STREAM = sse(
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi "}]}}],
     "modelVersion": "gemini-2.5-flash-001"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "there"}]}, "finishReason": "STOP"}],
     "usageMetadata": GEMINI_USAGE, "modelVersion": "gemini-2.5-flash-001"}, named=False)
GEMINI = Usage(model="gemini-2.5-flash-001", input_tokens=12, output_tokens=6, cache_read_tokens=8)

BEDROCK_USAGE = {"inputTokens": 5, "outputTokens": 3, "totalTokens": 38, "cacheReadInputTokens": 20,
                 "cacheWriteInputTokens": 10}
BEDROCK_WHOLE = {"output": {"message": {"role": "assistant", "content": [{"text": "Hi there"}]}},
                 "stopReason": "end_turn", "usage": BEDROCK_USAGE, "metrics": {"latencyMs": 100}}
BEDROCK_STREAM = b"".join([
    event_frame("messageStart", {"role": "assistant"}),
    event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi there"}}),
    event_frame("contentBlockStop", {"contentBlockIndex": 0}),
    event_frame("messageStop", {"stopReason": "end_turn"}),
    event_frame("metadata", {"usage": BEDROCK_USAGE, "metrics": {"latencyMs": 100}})])
BEDROCK = Usage(model="anthropic.claude-3-haiku-20240307-v1:0", input_tokens=35, output_tokens=3,
                cache_read_tokens=20, cache_write_tokens=10)


@dataclass
class Case:
    """One provider's chat answer, whole and streamed, and the usage it reported."""

    adapter: Any
    provider: str
    model: str
    whole: dict[str, Any]
    stream: bytes
    stream_type: str
    usage: Usage
    streamed_output: int | None = None  # the stream's output count, when it differs from the whole answer's


CASES = {
    "anthropic": Case(anthropic.CHAT, "anthropic", "claude-sonnet-4-5", ANTHROPIC_WHOLE, ANTHROPIC_STREAM,
                      "text/event-stream", CLAUDE, streamed_output=7),
    "cohere": Case(cohere.CHAT, "cohere", "command-a-03-2025", COHERE_WHOLE, COHERE_STREAM, "text/event-stream",
                   Usage(model="command-a-03-2025", input_tokens=7, output_tokens=3)),
    "gemini": Case(gemini.GOOGLE_CHAT, "google", "gemini-2.5-flash", GEMINI_WHOLE, GEMINI_STREAM,
                   "text/event-stream", GEMINI),
    "bedrock": Case(bedrock.CHAT, "bedrock", "anthropic.claude-3-haiku-20240307-v1:0", BEDROCK_WHOLE, BEDROCK_STREAM,
                    "application/vnd.amazon.eventstream", BEDROCK),
    "vertex-claude": Case(vertex.CHAT, "vertex-ai", "claude-sonnet-4-5@20250929", ANTHROPIC_WHOLE, ANTHROPIC_STREAM,
                          "text/event-stream", CLAUDE, streamed_output=7),
}


class Raw:
    """An upstream body read piece by piece."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def read1(self, size: int, decode_content: bool = False) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class Upstream:
    url = "http://127.0.0.1:9/native"

    def __init__(self, body: bytes, piece: int = 37) -> None:
        self.raw = Raw([body[i:i + piece] for i in range(0, len(body), piece)])


def facts(case: Case, stream: bool) -> CallFacts:
    return CallFacts(provider=case.provider, model=case.model, stream=stream, id="chatcmpl-t", created=1,
                     include_usage=True)


def translated(case: Case, stream: bool, front: Front = CHAT) -> Answer:
    """Return the provider's answer translated for the client."""
    translator = Translator(case.adapter, front, facts(case, stream), "/v1/chat/completions")
    if stream:
        native = Answer(200, "OK", [("Content-Type", case.stream_type)], b"", Upstream(case.stream))  # type: ignore[arg-type]
    else:
        native = Answer.whole(200, json.dumps(case.whole).encode(), [("Content-Type", "application/json")])
    return translator.answer(native)


def relayed(answer: Answer) -> list[bytes]:
    """Return the chunks the client gets, in order."""
    chunks = [answer.first_chunk]
    while answer.response is not None:
        chunk = answer.next_chunk()
        if not chunk:
            break
        chunks.append(chunk)
    return [chunk for chunk in chunks if chunk]


def byte_tap(answer: Answer, chunks: list[bytes]) -> Usage:
    """Return what the byte tap reads from the translated chunks (what the gateway recorded before)."""
    tap = UsageTap(answer.header("content-type"), answer.header("content-encoding"))
    for chunk in chunks:
        tap.feed(chunk)
    return tap.result()


def expected(case: Case, stream: bool) -> Usage:
    """Return the usage the provider reported for the whole answer or the stream."""
    if stream and case.streamed_output is not None:
        return replace(case.usage, output_tokens=case.streamed_output)
    return case.usage


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_translated_answer_carries_the_usage_the_byte_tap_read(name: str, stream: bool) -> None:
    case = CASES[name]
    answer = translated(case, stream)
    chunks = relayed(answer)
    assert answer.usage is not None
    assert answer.usage.result() == byte_tap(answer, chunks) == expected(case, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", ["anthropic", "gemini", "bedrock"])
def test_a_messages_answer_carries_the_usage_the_byte_tap_read(name: str, stream: bool) -> None:
    # /v1/messages: the provider's answer is bridged to Anthropic's shape, cache counts beside the prompt.
    case = CASES[name]
    answer = translated(case, stream, MESSAGES)
    chunks = relayed(answer)
    assert answer.usage is not None
    usage = answer.usage.result()
    assert usage == byte_tap(answer, chunks)
    assert (usage.input_tokens, usage.cache_read_tokens) == (case.usage.input_tokens, case.usage.cache_read_tokens)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_answer_without_usage_reports_the_zero_counts_its_client_reads(stream: bool) -> None:
    case = Case(gemini.GOOGLE_CHAT, "google", "gemini-2.5-flash",
                {k: v for k, v in GEMINI_WHOLE.items() if k != "usageMetadata"},
                sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}]}, named=False),
                "text/event-stream", Usage())
    answer = translated(case, stream, MESSAGES)
    chunks = relayed(answer)
    assert answer.usage is not None
    usage = answer.usage.result()
    assert usage == byte_tap(answer, chunks)
    assert (usage.input_tokens, usage.output_tokens) == (0, 0)


@pytest.mark.parametrize(("adapter", "provider", "native", "tokens"), [
    (cohere.EMBED, "cohere", {"embeddings": {"float": [[0.1, 0.2]]}, "meta": {"billed_units": {"input_tokens": 4}}}, 4),
    (gemini.GOOGLE_EMBED, "google", {"embeddings": [{"values": [0.1]}], "usageMetadata": {"promptTokenCount": 6}}, 6),
])
def test_translated_embeddings_carry_their_usage(adapter: Any, provider: str, native: dict[str, Any],
                                                 tokens: int) -> None:
    translator = Translator(adapter, OpenAIFront("embed"), CallFacts(provider, "embedder", False, "e", 1),
                            "/v1/embeddings")
    answer = translator.answer(Answer.whole(200, json.dumps(native).encode(), [("Content-Type", "application/json")]))
    assert answer.usage is not None
    assert answer.usage.result() == byte_tap(answer, relayed(answer)) == Usage(model="embedder", input_tokens=tokens)


def test_a_translated_error_answer_reports_no_usage() -> None:
    translator = Translator(anthropic.CHAT, CHAT, facts(CASES["anthropic"], False), "/v1/chat/completions")
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
    answer = translator.answer(Answer.whole(529, body, [("Content-Type", "application/json")]))
    assert answer.usage is not None
    assert answer.usage.result() == byte_tap(answer, relayed(answer)) == Usage()


# --- The observer: the byte tap is attached only to answers relayed as they came.


class Rows:
    """A request log that keeps the records it is given."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, row: Any) -> None:
        self.rows.append(row)


class CountingTap(UsageTap):
    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        CountingTap.made += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def counting_tap(monkeypatch: pytest.MonkeyPatch) -> type[CountingTap]:
    CountingTap.made = 0
    monkeypatch.setattr("app.observe.UsageTap", CountingTap)
    return CountingTap


def recorded(answer: Answer) -> tuple[Any, Any]:
    """Relay the answer to the end through the observer; return its record and the tap it attached."""
    rows = Rows()
    observer = CallObserver(PricingTable.default(), rows, None, access_lines=False)  # type: ignore[arg-type]
    ctx = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={}, route="unified",
                         trace_id="t")
    observer.started(ctx)
    tap = observer.tap(ctx, answer)
    relay = Relay(answer, ctx, on_close=observer.finished(ctx, answer.status), tap=tap)
    for _ in relay:
        pass
    relay.close()
    return rows.rows[0], tap


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_translated_answer_is_recorded_without_the_byte_tap(name: str, stream: bool,
                                                              counting_tap: type[CountingTap]) -> None:
    case = CASES[name]
    want = expected(case, stream)
    row, tap = recorded(translated(case, stream))
    assert tap is None and counting_tap.made == 0
    assert (row.model, row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
        want.model, want.input_tokens, want.output_tokens, want.cache_read_tokens, want.cache_write_tokens)


def test_an_answer_relayed_as_it_came_is_read_by_the_byte_tap(counting_tap: type[CountingTap]) -> None:
    answer = Answer.whole(200, json.dumps(ANTHROPIC_WHOLE).encode(), [("Content-Type", "application/json")])
    row, tap = recorded(answer)
    assert tap is not None and counting_tap.made == 1
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens) == (130, 5, 100)


def test_a_translated_answer_rebuilt_by_hooks_is_read_from_its_bytes(counting_tap: type[CountingTap]) -> None:
    # Hooks may rewrite the body (hook_results, a mutator's answer): the bytes the client gets are what count.
    rebuilt = translated(CASES["gemini"], False)
    body = json.loads(rebuilt.first_chunk)
    rebuilt = rebuilt.with_body(246, json.dumps({**body, "hook_results": {"after_request_hooks": []}}).encode())
    row, tap = recorded(rebuilt)
    assert tap is not None and counting_tap.made == 1
    assert (row.model, row.input_tokens, row.output_tokens) == ("gemini-2.5-flash-001", 12, 6)
