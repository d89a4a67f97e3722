"""The Cohere v2 adapters: golden requests, answers and streams (chunk by chunk), errors, embeddings."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from app.call.answer import Answer
from app.errors import BadRequest, UpstreamUnreachable
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.call import StreamTransform, Translator
from app.translate.cohere import CHAT, EMBED
from app.translate.errors import unified_error
from app.translate.fronts import OpenAIFront, OpenAIStream

FACTS = CallFacts(provider="cohere", model="command-a-03-2025", stream=False, id="chatcmpl-test",
                  created=1700000000)
STREAM_FACTS = replace(FACTS, stream=True)
LOOSE = replace(FACTS, strict=False)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NATIVE_WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "description": "Weather of a city"}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
NATIVE_CLOCK = {"type": "function", "function": {"name": "get_time",
                                                  "parameters": {"type": "object", "properties": {}}}}


def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "command-a-03-2025", "provider": "cohere",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "command-a-03-2025", "provider": "cohere", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


# --------------------------------------------------------------------------- chat requests


def test_request_golden_every_message_kind_and_parameter() -> None:
    body = {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": "Let me look up the weather.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees.", "name": "bot"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [WEATHER, CLOCK], "tool_choice": "required",
        "temperature": 0.4, "top_p": 0.9, "max_completion_tokens": 200, "max_tokens": 999, "stop": "END",
        "seed": 7, "frequency_penalty": 0.1, "presence_penalty": 0.2, "n": 1, "stream": True,
        "stream_options": {"include_usage": True}, "logprobs": True, "parallel_tool_calls": True,
        "safety_mode": "CONTEXTUAL",
    }
    native = CHAT.request(body, FACTS)
    assert (native.path, native.from_root, dict(native.headers)) == ("/v2/chat", True, {})
    assert native.body == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "tool_plan": "Let me look up the weather.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "assistant", "content": "It is 21 degrees."},
            {"role": "user", "content": "Thanks"},
        ],
        "tool_choice": "REQUIRED", "tools": [NATIVE_WEATHER, NATIVE_CLOCK], "strict_tools": True,
        "temperature": 0.4, "p": 0.9, "max_tokens": 200, "stop_sequences": ["END"], "seed": 7,
        "frequency_penalty": 0.1, "presence_penalty": 0.2, "logprobs": True, "safety_mode": "CONTEXTUAL",
        "stream": True,
    }


def test_request_minimal_and_defaults() -> None:
    native = CHAT.request({"model": "command-r", "messages": [{"role": "user", "content": "hi"}]}, FACTS)
    assert native.body == {"model": "command-r", "messages": [{"role": "user", "content": "hi"}]}


def test_request_leaves_missing_model_and_messages_to_cohere() -> None:
    # Cohere's own 400 says what is missing; the gateway does not guess a model.
    assert CHAT.request({}, FACTS).body == {}


@pytest.mark.parametrize(("top_p", "p"), [(1, 0.99), (1.0, 0.99), (0, 0.01), (0.5, 0.5)])
def test_top_p_is_kept_inside_coheres_bounds(top_p: float, p: float) -> None:
    native = CHAT.request({"model": "m", "messages": [], "top_p": top_p}, FACTS)
    assert native.body["p"] == p


@pytest.mark.parametrize(("stop", "expected"), [(["a", "b"], {"stop_sequences": ["a", "b"]}), ([], {}),
                                                (None, {})])
def test_stop_lists(stop: Any, expected: dict[str, Any]) -> None:
    native = CHAT.request({"model": "m", "messages": [], "stop": stop}, FACTS)
    assert native.body == {"model": "m", "messages": [], **expected}


def test_top_k_and_coheres_own_fields_pass() -> None:
    body = {"model": "m", "messages": [], "top_k": 40, "documents": ["doc"], "citation_options": {"mode": "FAST"},
            "thinking": {"type": "enabled", "token_budget": 100}, "priority": 3}
    assert CHAT.request(body, FACTS).body == {
        "model": "m", "messages": [], "k": 40, "documents": ["doc"], "citation_options": {"mode": "FAST"},
        "thinking": {"type": "enabled", "token_budget": 100}, "priority": 3}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"tools": [NATIVE_WEATHER, NATIVE_CLOCK]}),
    ("none", {"tools": [NATIVE_WEATHER, NATIVE_CLOCK], "tool_choice": "NONE"}),
    ("required", {"tools": [NATIVE_WEATHER, NATIVE_CLOCK], "tool_choice": "REQUIRED"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"tools": [NATIVE_CLOCK], "tool_choice": "REQUIRED"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [], "tools": [WEATHER, CLOCK], "tool_choice": choice}
    native = CHAT.request(body, FACTS).body
    native.pop("strict_tools")
    assert native == {"model": "m", "messages": [], **expected}


@pytest.mark.parametrize(("value", "expected"), [
    ({"type": "text"}, {"type": "text"}),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}},
     {"type": "json_object", "json_schema": {
         "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}),
    ({"type": "json_schema", "json_schema": {"name": "anything"}}, {"type": "json_object"}),
])
def test_response_format(value: dict[str, Any], expected: dict[str, Any]) -> None:
    native = CHAT.request({"model": "m", "messages": [], "response_format": value}, FACTS)
    assert native.body["response_format"] == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"n": 2}, "n: cohere answers with one choice only"),
    ({"functions": [{"name": "f"}]}, "functions (the deprecated function calling)"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role 'function' cannot be sent"),
    ({"messages": "hi"}, "messages must be a list"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]: cohere chat takes text and image_url parts, not 'input_audio'"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]},
     "messages[0].content[0]: cohere takes only text in system messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     "must be a data: URL or an http(s) URL"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]: cohere takes function tools only"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice names function 'nope', which is not in tools"),
    ({"tool_choice": "any"}, "tool_choice must be auto, required, none"),
    ({"response_format": {"type": "yaml"}}, "response_format type 'yaml' is not supported by cohere"),
])
def test_refused_requests(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as err:
        CHAT.request({"model": "m", **body}, FACTS)
    assert message in err.value.message


def test_dropped_parameters_are_warned_about_by_name(caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": "m", "messages": [], "user": "u-secret-id", "logit_bias": {"1": 5}, "store": True,
            "parallel_tool_calls": False, "top_logprobs": 3, "logprobs": True}
    with caplog.at_level(logging.WARNING, logger="app.translate.cohere"):
        native = CHAT.request(body, FACTS)
    assert native.body == {"model": "m", "messages": [], "logprobs": True}
    assert [r.getMessage() for r in caplog.records] == [
        "cohere /v2/chat has no place for logit_bias, parallel_tool_calls, store, top_logprobs, user: dropped"]
    assert "u-secret-id" not in caplog.text


def test_nothing_is_warned_about_for_a_plain_body(caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": "m", "messages": [], "n": 1, "stream_options": {"include_usage": True},
            "parallel_tool_calls": True, "top_logprobs": 0}
    with caplog.at_level(logging.WARNING, logger="app.translate.cohere"):
        CHAT.request(body, FACTS)
    assert caplog.records == []


def test_tool_message_without_id_is_sent_for_cohere_to_refuse() -> None:
    native = CHAT.request({"model": "m", "messages": [{"role": "tool", "content": [{"type": "text", "text": "r"}]}]},
                          FACTS)
    assert native.body["messages"] == [{"role": "tool", "content": [{"type": "text", "text": "r"}]}]


# --------------------------------------------------------------------------- chat answers


def test_response_golden_text() -> None:
    native = {"id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4", "finish_reason": "COMPLETE",
              "message": {"role": "assistant", "content": [{"type": "text", "text": "LLMs are "},
                                                           {"type": "text", "text": "language models."}]},
              "usage": {"billed_units": {"input_tokens": 5.0, "output_tokens": 418.0},
                        "tokens": {"input_tokens": 71, "output_tokens": 418}, "cached_tokens": 3}}
    assert CHAT.response(native, FACTS) == {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1700000000, "model": "command-a-03-2025",
        "provider": "cohere",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "LLMs are language models."},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 418, "total_tokens": 423,
                  "prompt_tokens_details": {"cached_tokens": 3}},
    }


def test_response_golden_tool_calls() -> None:
    # Cohere's documented tool answer: a thinking block, two calls.
    native = {"id": "9e5f00aa-bf1e-481a-abe3-0eceac18c3ec", "finish_reason": "TOOL_CALL",
              "message": {"role": "assistant",
                          "content": [{"type": "thinking", "thinking": "I will first find the sales summary."}],
                          "tool_calls": [
                              {"id": "query_daily_sales_report_hgxxmkby3wta", "type": "function",
                               "function": {"name": "query_daily_sales_report",
                                            "arguments": "{\"day\": \"2023-09-29\"}"}},
                              {"id": "query_product_catalog_rpg0z5h8yyz2", "type": "function",
                               "function": {"name": "query_product_catalog",
                                            "arguments": "{\"category\": \"Electronics\"}"}}]},
              "usage": {"billed_units": {"input_tokens": 127, "output_tokens": 69},
                        "tokens": {"input_tokens": 1032, "output_tokens": 124}}}
    calls = [{"id": "query_daily_sales_report_hgxxmkby3wta", "type": "function",
              "function": {"name": "query_daily_sales_report", "arguments": "{\"day\": \"2023-09-29\"}"}},
             {"id": "query_product_catalog_rpg0z5h8yyz2", "type": "function",
              "function": {"name": "query_product_catalog", "arguments": "{\"category\": \"Electronics\"}"}}]
    result = CHAT.response(native, FACTS)
    assert result["choices"] == [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                                  "logprobs": None, "finish_reason": "tool_calls"}]
    assert result["usage"] == {"prompt_tokens": 127, "completion_tokens": 69, "total_tokens": 196}
    loose = CHAT.response(native, LOOSE)["choices"][0]["message"]
    assert loose == {"role": "assistant", "content": None, "tool_calls": calls,
                     "reasoning_content": "I will first find the sales summary."}


def test_tool_plan_is_the_assistant_text() -> None:
    native = {"id": "x", "finish_reason": "TOOL_CALL", "message": {
        "role": "assistant", "tool_plan": "I will check the weather.",
        "tool_calls": [{"id": "get_weather_1", "type": "function", "function": {"name": "get_weather"}}]}}
    message = CHAT.response(native, FACTS)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "I will check the weather.", "tool_calls": [
        {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    assert "usage" not in CHAT.response(native, FACTS)


@pytest.mark.parametrize(("cohere", "unified"), [
    ("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length"), ("TIMEOUT", "length"),
    ("TOOL_CALL", "tool_calls"), ("ERROR_TOXIC", "content_filter"), ("ERROR_LIMIT", "length"),
])
def test_finish_reasons(cohere: str, unified: str) -> None:
    native = {"id": "x", "finish_reason": cohere, "message": {"role": "assistant", "content": []}}
    assert CHAT.response(native, FACTS)["choices"][0]["finish_reason"] == unified


def test_error_finish_is_a_failed_call_not_an_answer() -> None:
    native = {"id": "x", "finish_reason": "ERROR", "message": {"role": "assistant", "content": []}}
    with pytest.raises(UpstreamUnreachable, match="cohere error: the generation failed"):
        CHAT.response(native, FACTS)
    with pytest.raises(UpstreamUnreachable):
        CHAT.response({"unexpected": True}, FACTS)


def test_citations_and_logprobs() -> None:
    citation = {"start": 0, "end": 5, "text": "Hello", "sources": [{"type": "document", "id": "doc:0"}]}
    native = {"id": "x", "finish_reason": "COMPLETE",
              "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello there"}],
                          "citations": [citation]},
              "logprobs": [{"text": "Hello", "token_ids": [1, 2], "logprobs": [-0.5, -0.25]},
                           {"text": " there", "token_ids": [3], "logprobs": [-1.0]}]}
    strict = CHAT.response(native, FACTS)["choices"][0]
    assert strict["message"] == {"role": "assistant", "content": "Hello there"}
    assert strict["logprobs"] == {"refusal": None, "content": [
        {"token": "Hello", "logprob": -0.75, "bytes": [72, 101, 108, 108, 111], "top_logprobs": []},
        {"token": " there", "logprob": -1.0, "bytes": [32, 116, 104, 101, 114, 101], "top_logprobs": []}]}
    assert CHAT.response(native, LOOSE)["choices"][0]["message"]["citations"] == [citation]


def test_usage_falls_back_to_raw_tokens() -> None:
    native = {"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []},
              "usage": {"tokens": {"input_tokens": 71, "output_tokens": 26}}}
    assert CHAT.response(native, FACTS)["usage"] == {"prompt_tokens": 71, "completion_tokens": 26,
                                                     "total_tokens": 97}


# --------------------------------------------------------------------------- chat streams

# Cohere's documented text stream (first pieces), as the wire carries it.
TEXT_STREAM = b"".join([
    event("message-start", id="29f14a5a-11de-4cae-9800-25e4747408ea", delta={"message": {"role": "assistant"}}),
    event("content-start", index=0, delta={"message": {"content": {"type": "text", "text": ""}}}),
    event("content-delta", index=0, delta={"message": {"content": {"text": "LL"}}}),
    event("content-delta", index=0, delta={"message": {"content": {"text": "Ms"}}}),
    event("content-delta", index=0, delta={"message": {"content": {"text": " stand for large language models."}}}),
    event("content-end", index=0),
    event("message-end", delta={"finish_reason": "COMPLETE", "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": 26},
        "tokens": {"input_tokens": 71, "output_tokens": 26}}}),
    b"data: [DONE]\n\n",
])
TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "LL"}),
    chunk({"content": "Ms"}),
    chunk({"content": " stand for large language models."}),
    chunk({}, "stop"),
    usage_chunk(5, 26),
]

# Cohere's documented tool stream (shortened): a tool plan, then two calls.
TOOL_STREAM = b"".join([
    event("message-start", id="2edfdf70-019c-4f7a-be20-3cdbfaa3dca6", delta={"message": {"role": "assistant"}}),
    event("tool-plan-delta", delta={"message": {"tool_plan": "I will use"}}),
    event("tool-plan-delta", delta={"message": {"tool_plan": " the tools."}}),
    event("tool-call-start", index=0, delta={"message": {"tool_calls": {
        "id": "query_daily_sales_report_j3f0adww9pmr", "type": "function",
        "function": {"name": "query_daily_sales_report", "arguments": ""}}}}),
    event("tool-call-delta", index=0, delta={"message": {"tool_calls": {"function": {"arguments": "{\""}}}}),
    event("tool-call-delta", index=0, delta={"message": {"tool_calls": {"function": {"arguments": "day\": \"2023"}}}}),
    event("tool-call-delta", index=0, delta={"message": {"tool_calls": {"function": {"arguments": "-09-29\"}"}}}}),
    event("tool-call-end", index=0),
    event("tool-call-start", index=1, delta={"message": {"tool_calls": {
        "id": "query_product_catalog_c66nf11r6s8g", "type": "function",
        "function": {"name": "query_product_catalog", "arguments": "{\"category\": "}}}}),
    event("tool-call-delta", index=1,
          delta={"message": {"tool_calls": {"function": {"arguments": "\"Electronics\"}"}}}}),
    event("tool-call-end", index=1),
    event("message-end", delta={"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 126, "output_tokens": 84}, "tokens": {"input_tokens": 1589}}}),
    b"data: [DONE]\n\n",
])
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "I will use"}),
    chunk({"content": " the tools."}),
    chunk({"tool_calls": [{"index": 0, "id": "query_daily_sales_report_j3f0adww9pmr", "type": "function",
                           "function": {"name": "query_daily_sales_report", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "day\": \"2023"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "-09-29\"}"}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "query_product_catalog_c66nf11r6s8g", "type": "function",
                           "function": {"name": "query_product_catalog", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{\"category\": "}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": "\"Electronics\"}"}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(126, 84),
]


def feed_in_pieces(raw: bytes, size: int, facts: CallFacts = STREAM_FACTS) -> list[dict[str, Any]]:
    parser = CHAT.stream(facts)
    chunks = []
    for start in range(0, len(raw), size):
        chunks += parser.feed(raw[start:start + size])
    return chunks + parser.finish()


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize(("raw", "expected"), [(TEXT_STREAM, TEXT_CHUNKS), (TOOL_STREAM, TOOL_CHUNKS)],
                         ids=["text", "tools"])
def test_stream_golden_in_awkward_pieces(raw: bytes, expected: list[dict[str, Any]], size: int) -> None:
    assert feed_in_pieces(raw, size) == expected


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_stream_with_crlf_lines(size: int) -> None:
    assert feed_in_pieces(TEXT_STREAM.replace(b"\n", b"\r\n"), size) == TEXT_CHUNKS


def test_stream_chunks_leave_as_each_event_completes() -> None:
    parser = CHAT.stream(STREAM_FACTS)
    events = TEXT_STREAM.split(b"\n\n")
    assert parser.feed(events[0]) == []  # the blank line that ends the event has not come yet
    assert parser.feed(b"\n\n") == [TEXT_CHUNKS[0]]
    assert parser.feed(events[1] + b"\n\n") == []  # content-start carries no text
    assert parser.feed(events[2] + b"\n\n" + events[3][:10]) == [TEXT_CHUNKS[1]]


def test_stream_thinking_and_logprobs() -> None:
    raw = b"".join([
        event("message-start", id="m", delta={"message": {"role": "assistant"}}),
        event("content-start", index=0, delta={"message": {"content": {"type": "thinking", "thinking": ""}}}),
        event("content-delta", index=0, delta={"message": {"content": {"thinking": "Hmm."}}}),
        event("content-end", index=0),
        event("content-delta", index=1, delta={"message": {"content": {"text": "Hi"}}},
              logprobs={"text": "Hi", "token_ids": [9], "logprobs": [-0.5]}),
        event("message-end", delta={"finish_reason": "MAX_TOKENS"}),
    ])
    logprob = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}],
               "refusal": None}
    strict = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}, logprobs=logprob),
              chunk({}, "length")]
    assert feed_in_pieces(raw, 5) == strict
    loose = list(strict)
    loose.insert(1, chunk({"reasoning_content": "Hmm."}))
    assert feed_in_pieces(raw, 5, replace(STREAM_FACTS, strict=False)) == loose


def test_stream_without_message_start_still_names_the_role_first() -> None:
    raw = event("content-delta", index=0, delta={"message": {"content": {"text": "Hi"}}}) + \
        event("message-end", delta={"finish_reason": "COMPLETE"})
    assert feed_in_pieces(raw, 1 << 20) == [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                                            chunk({}, "stop")]


def test_stream_error_at_message_end_breaks_the_stream() -> None:
    parser = CHAT.stream(STREAM_FACTS)
    assert parser.feed(TEXT_STREAM.split(b"event: content-end")[0]) == TEXT_CHUNKS[:4]
    with pytest.raises(UpstreamBroke) as err:
        parser.feed(event("message-end", delta={"finish_reason": "ERROR", "error": "internal model failure"}))
    assert err.value.error == {"message": "cohere error: internal model failure", "type": "api_error",
                               "param": None, "code": None}


def test_stream_error_event_breaks_the_stream() -> None:
    parser = CHAT.stream(STREAM_FACTS)
    with pytest.raises(UpstreamBroke) as err:
        parser.feed(b'data: {"message": "streaming error - request cancelled"}\n\n')
    assert err.value.error["message"] == "cohere error: streaming error - request cancelled"


def test_stream_cut_before_message_end_is_a_failure() -> None:
    parser = CHAT.stream(STREAM_FACTS)
    parser.feed(TEXT_STREAM.split(b"event: message-end")[0])
    with pytest.raises(UpstreamBroke) as err:
        parser.finish()
    assert err.value.error["message"] == "cohere error: the stream ended before message-end"


def test_stream_through_the_openai_front_ends_in_done_or_an_error_event() -> None:
    transform = StreamTransform(CHAT.stream(STREAM_FACTS), OpenAIStream(), "cohere", None)
    out = transform.feed(TEXT_STREAM) + transform.finish()
    lines = [line for line in out.decode().split("\n\n") if line]
    assert [json.loads(line[len("data: "):]) for line in lines[:-1]] == TEXT_CHUNKS
    assert lines[-1] == "data: [DONE]"
    broken = StreamTransform(CHAT.stream(STREAM_FACTS), OpenAIStream(), "cohere", None)
    out = broken.feed(TEXT_STREAM.split(b"event: message-end")[0]) + broken.finish()
    assert out.decode().rstrip().endswith('"message":"cohere error: the stream ended before message-end",'
                                          '"type":"api_error","param":null,"code":null}}')
    assert b"[DONE]" not in out


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "body", "kind"), [
    (400, {"id": "e1", "message": "invalid request: valid input_type must be provided with the provided model"},
     "invalid_request_error"),
    (401, {"message": "no api key supplied"}, "authentication_error"),
    (422, {"message": "No valid tool call or response generated"}, "invalid_request_error"),
    (429, {"message": "You are past the per minute request limit, please wait and try again later."},
     "rate_limit_error"),
    (500, {"message": "internal server error"}, "api_error"),
])
def test_cohere_errors_become_unified(status: int, body: dict[str, Any], kind: str) -> None:
    expected = {"error": {"message": f"cohere error: {body['message']}", "type": kind, "param": None, "code": None},
                "provider": "cohere"}
    assert unified_error("cohere", status, json.dumps(body).encode()) == expected
    translator = Translator(CHAT, OpenAIFront("chatComplete"), FACTS)
    answer = translator.answer(Answer.whole(status, json.dumps(body).encode(), [("Content-Type", "application/json")]))
    assert (answer.status, json.loads(answer.first_chunk)) == (status, expected)


def test_whole_answer_through_the_translator() -> None:
    native = {"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": [
        {"type": "text", "text": "Hi"}]}, "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 1}}}
    translator = Translator(CHAT, OpenAIFront("chatComplete"), FACTS)
    answer = translator.answer(Answer.whole(200, json.dumps(native).encode(), [("Content-Type", "application/json")]))
    assert json.loads(answer.first_chunk)["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


# --------------------------------------------------------------------------- embeddings


def test_embed_request_golden() -> None:
    native = EMBED.request({"model": "embed-v4.0", "input": ["hello", "goodbye"], "dimensions": 256,
                            "encoding_format": "float", "truncate": "END"}, FACTS)
    assert (native.path, native.from_root) == ("/v2/embed", True)
    assert native.body == {"model": "embed-v4.0", "texts": ["hello", "goodbye"], "input_type": "search_document",
                           "embedding_types": ["float"], "output_dimension": 256, "truncate": "END"}


def test_embed_request_input_type_override_and_base64(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.translate.cohere"):
        native = EMBED.request({"model": "embed-english-v3.0", "input": "query text", "input_type": "search_query",
                                "encoding_format": "base64", "user": "u1"}, FACTS)
    assert native.body == {"model": "embed-english-v3.0", "texts": ["query text"], "input_type": "search_query",
                           "embedding_types": ["base64"]}
    assert [r.getMessage() for r in caplog.records] == ["cohere /v2/embed has no place for user: dropped"]


@pytest.mark.parametrize(("body", "message"), [
    ({"input": [[1, 2, 3]]}, "cohere embeds text only"),
    ({"input": None}, "input is required"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format must be float or base64"),
])
def test_embed_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        EMBED.request({"model": "embed-v4.0", **body}, FACTS)


def test_embed_response_golden() -> None:
    native = {"id": "da6e531f", "texts": ["hello", "goodbye"], "response_type": "embeddings_by_type",
              "embeddings": {"float": [[0.016296387, -0.008354187], [0.04699707, -0.07104492]]},
              "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}}}
    assert EMBED.response(native, replace(FACTS, model="embed-v4.0")) == {
        "object": "list", "model": "embed-v4.0", "provider": "cohere",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.016296387, -0.008354187]},
                 {"object": "embedding", "index": 1, "embedding": [0.04699707, -0.07104492]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }


def test_embed_response_base64_and_failures() -> None:
    native = {"id": "x", "embeddings": {"base64": ["AACAPw==", "AAAAQA=="]}, "meta": {}}
    assert EMBED.response(native, FACTS)["data"] == [
        {"object": "embedding", "index": 0, "embedding": "AACAPw=="},
        {"object": "embedding", "index": 1, "embedding": "AAAAQA=="}]
    assert "usage" not in EMBED.response(native, FACTS)
    with pytest.raises(UpstreamUnreachable):
        EMBED.response({"embeddings": {"int8": [[1]]}}, FACTS)
    with pytest.raises(UpstreamUnreachable):
        EMBED.response([], FACTS)
