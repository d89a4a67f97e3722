"""The anthropic adapter of /v1/chat/completions: requests, answers, streams and errors, as exact dicts."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest
import requests

from app.call.answer import Answer
from app.errors import BadRequest
from app.translate.anthropic import CHAT
from app.translate.anthropic.request import DEFAULT_MAX_TOKENS
from app.translate.anthropic.stream import AnthropicChunks
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.call import StreamTransform, Translator
from app.translate.errors import unified_error
from app.translate.fronts import OpenAIFront, OpenAIStream
from tests.fakes.provider import FakeProvider

FACTS = CallFacts(provider="anthropic", model="claude-sonnet-4-5", stream=False, id="chatcmpl-local",
                  created=1700000000)
LOOSE = replace(FACTS, strict=False)
PNG = "iVBORw0KGgoAAAANSUhEUg=="
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}},
                                           "strict": True}}]
NATIVE_TOOLS = [{"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}, "strict": True}]


def native(body: dict[str, Any], facts: CallFacts = FACTS) -> dict[str, Any]:
    request = CHAT.request(body, facts)
    assert request.path == "/messages" and not request.from_root and not request.headers
    return request.body


def user(text: str = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------- requests


def test_request_with_many_parameters(caplog: pytest.LogCaptureFixture) -> None:
    body = {
        "model": "claude-sonnet-4-5", "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}}]},
        ],
        "max_completion_tokens": 300, "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": "END",
        "user": "user-42", "n": 1, "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.25, "logprobs": True,
        "top_logprobs": 2,
    }
    with caplog.at_level(logging.WARNING, logger="app.translate.anthropic"):
        result = native(body)
    assert result == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these pictures?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}]}],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "anthropic: dropped frequency_penalty, logprobs, presence_penalty, seed, top_logprobs, "
        "which the Messages API does not take"]


def test_system_and_developer_messages_join_the_top_level_system() -> None:
    body = {"model": "claude-x", "messages": [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French.",
                                           "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "Bonjour"},
        user("Again"),
    ]}
    assert native(body) == {
        "model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS,
        "system": [{"type": "text", "text": "Be brief."},
                   {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}],
        "messages": [user("Hi"), {"role": "assistant", "content": [{"type": "text", "text": "Bonjour"}]},
                     user("Again")],
    }


@pytest.mark.parametrize(("limits", "expected"), [
    ({}, 4096), ({"max_tokens": 50}, 50), ({"max_completion_tokens": 70}, 70),
    ({"max_tokens": 50, "max_completion_tokens": 70}, 70), ({"max_tokens": None}, 4096)])
def test_max_tokens(limits: dict[str, Any], expected: int) -> None:
    assert native({"model": "m", "messages": [user()], **limits})["max_tokens"] == expected


def test_stop_list_and_catalog_model_prefix() -> None:
    result = native({"model": "@anthropic-prod/claude-haiku-4-5", "messages": [user()], "stop": ["a", "b"]})
    assert (result["model"], result["stop_sequences"]) == ("claude-haiku-4-5", ["a", "b"])


def test_tools_and_parallel_tool_calls() -> None:
    result = native({"model": "m", "messages": [user()], "tools": TOOLS, "tool_choice": "required",
                     "parallel_tool_calls": False})
    assert result["tools"] == NATIVE_TOOLS
    assert result["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
    ({"type": "function", "function": {"name": "get_time"}}, False,
     {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),  # Anthropic's none takes no parallel flag: nothing is called anyway
    (None, True, None),
])
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [user()], "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert native(body).get("tool_choice") == expected


def test_legacy_functions_become_tools() -> None:
    result = native({"model": "m", "messages": [user()], "functions": [TOOLS[0]["function"]],
                     "function_call": {"name": "get_weather"}})
    assert result["tools"] == NATIVE_TOOLS[:1]
    assert result["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_multi_turn_tool_round_trip() -> None:
    body = {"model": "m", "tools": TOOLS, "messages": [
        user("Weather and time in Paris?"),
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
        user("And tomorrow?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_3", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris","day":"tomorrow"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
    ]}
    assert native(body)["messages"] == [
        user("Weather and time in Paris?"),
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_3", "name": "get_weather",
             "input": {"city": "Paris", "day": "tomorrow"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]


def test_thinking_blocks_handed_back_lead_the_assistant_turn() -> None:
    thinking = {"type": "thinking", "thinking": "Paris, so Celsius.", "signature": "sig-1"}
    body = {"model": "m", "thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": [
        user("Weather?"),
        {"role": "assistant", "content": "", "content_blocks": [thinking, {"type": "text", "text": "ignored"}],
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "18C"}]}
    result = native(body)
    assert result["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert result["messages"][1] == {"role": "assistant", "content": [
        thinking, {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]}


def test_pdf_file_becomes_a_document() -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
    result = native({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert result["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}]


def test_json_schema_response_format_becomes_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    result = native({"model": "m", "messages": [user()], "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}})
    assert result["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in native({"model": "m", "messages": [user()], "response_format": {"type": "text"}})


@pytest.mark.parametrize(("change", "named"), [
    ({"n": 2}, "n:"),
    ({"response_format": {"type": "json_object"}}, "json_object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
    ({"response_format": {"type": "json_schema", "json_schema": "answer"}}, "schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"modalities": ["text", "audio"]}, "audio"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "function"),
    ({"messages": [{"role": "critic", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "audio"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://h/a.png"}}]}]},
     "image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]}, "image/bmp"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]}, "base64 data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, "file_data"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "JSON object"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"tools": [{"type": "web_search"}]}, "tool type"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"model": None}, "model"),
])
def test_refused_with_400_naming_the_parameter(change: dict[str, Any], named: str) -> None:
    body = {"model": "m", "messages": [user()], **change}
    with pytest.raises(BadRequest) as refused:
        CHAT.request(body, replace(FACTS, model=None))
    assert refused.value.status == 400 and named in refused.value.message


# --------------------------------------------------------------------------- answers


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 21, "output_tokens": 9, **usage}}


def test_text_answer() -> None:
    answer = CHAT.response(message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]), FACTS)
    assert answer == {
        "id": "msg_01", "object": "chat.completion", "created": 1700000000, "model": "claude-sonnet-4-5-20250929",
        "provider": "anthropic",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
    }


def test_tool_use_answer() -> None:
    native_answer = message([
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "note": "ça"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}], "tool_use")
    choice = CHAT.response(native_answer, FACTS)["choices"][0]
    assert choice == {"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "note": "ça"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}
    only_tools = CHAT.response(message(native_answer["content"][1:], "tool_use"), FACTS)
    assert only_tools["choices"][0]["message"]["content"] is None


def test_usage_with_cache_tokens() -> None:
    answer = CHAT.response(message([{"type": "text", "text": "x"}], cache_read_input_tokens=2048,
                                   cache_creation_input_tokens=100), FACTS)
    assert answer["usage"] == {"prompt_tokens": 21 + 2048 + 100, "completion_tokens": 9,
                               "total_tokens": 21 + 2048 + 100 + 9, "prompt_tokens_details": {"cached_tokens": 2048},
                               "cache_creation_input_tokens": 100}


def test_usage_with_thinking_tokens_and_without_usage() -> None:
    raw = message([{"type": "text", "text": "x"}])
    raw["usage"]["output_tokens_details"] = {"thinking_tokens": 5}
    assert CHAT.response(raw, FACTS)["usage"] == {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
                                                  "completion_tokens_details": {"reasoning_tokens": 5}}
    del raw["usage"]
    assert "usage" not in CHAT.response(raw, FACTS)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("something_new", "stop")])
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    answer = CHAT.response(message([{"type": "text", "text": "x"}], stop_reason), FACTS)
    assert answer["choices"][0]["finish_reason"] == finish


THINKING = {"type": "thinking", "thinking": "Short answer.", "signature": "sig-1"}


def test_thinking_left_out_when_strict() -> None:
    answer = CHAT.response(message([THINKING, {"type": "text", "text": "Hi"}]), FACTS)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


def test_thinking_rides_along_when_not_strict() -> None:
    redacted = {"type": "redacted_thinking", "data": "abc"}
    blocks: list[dict[str, Any]] = [THINKING, redacted, {"type": "text", "text": "Hi"},
              {"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}]
    answer = CHAT.response(message(blocks, "tool_use"), LOOSE)
    assert answer["choices"][0]["message"] == {
        "role": "assistant", "content": "Hi",
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
        "content_blocks": [THINKING, redacted, {"type": "text", "text": "Hi"}]}
    plain = CHAT.response(message([{"type": "text", "text": "Hi"}]), LOOSE)
    assert "content_blocks" not in plain["choices"][0]["message"]


# --------------------------------------------------------------------------- streams


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode() for e in events)


START = {"type": "message_start", "message": {
    "id": "msg_s1", "type": "message", "role": "assistant", "content": [], "model": "claude-haiku-4-5",
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 30,
              "output_tokens": 1}}}
STOP = {"type": "message_stop"}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def message_delta(stop_reason: str, output_tokens: int) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens}}


TEXT_STREAM = sse(START, block_start(0, {"type": "text", "text": ""}), {"type": "ping"},
                  delta(0, type="text_delta", text="Ça va"), delta(0, type="text_delta", text=" bien."),
                  {"type": "content_block_stop", "index": 0}, message_delta("end_turn", 7), STOP)


def chunk(delta_: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "msg_s1", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-haiku-4-5",
            "provider": "anthropic", "choices": [{"index": 0, "delta": delta_, "logprobs": None,
                                                  "finish_reason": finish}]}


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_s1", "object": "chat.completion.chunk", "created": 1700000000, "model": "claude-haiku-4-5",
            "provider": "anthropic", "choices": [], "usage": usage}


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Ça va"}),
    chunk({"content": " bien."}),
    chunk({}, "stop"),
    usage_chunk({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49,
                 "prompt_tokens_details": {"cached_tokens": 30}, "cache_creation_input_tokens": 0}),
]


def parse(data: bytes, facts: CallFacts = FACTS, pieces: list[bytes] | None = None) -> list[dict[str, Any]]:
    parser = CHAT.stream(facts)
    chunks: list[dict[str, Any]] = []
    for piece in pieces if pieces is not None else [data]:
        chunks += parser.feed(piece)
    return chunks + parser.finish()


def test_text_stream() -> None:
    assert parse(TEXT_STREAM) == TEXT_CHUNKS


def test_every_split_point_gives_the_same_chunks() -> None:
    for cut in range(len(TEXT_STREAM) + 1):
        assert parse(TEXT_STREAM, pieces=[TEXT_STREAM[:cut], TEXT_STREAM[cut:]]) == TEXT_CHUNKS, cut


def test_byte_by_byte_and_crlf_give_the_same_chunks() -> None:
    assert parse(TEXT_STREAM, pieces=[bytes([b]) for b in TEXT_STREAM]) == TEXT_CHUNKS
    crlf = TEXT_STREAM.replace(b"\n", b"\r\n")
    assert parse(crlf, pieces=[crlf[i:i + 3] for i in range(0, len(crlf), 3)]) == TEXT_CHUNKS


def test_chunks_leave_as_each_event_completes() -> None:
    parser = CHAT.stream(FACTS)
    end = b' va"}}\n\n'
    first_delta_end = TEXT_STREAM.index(end) + len(end)
    assert parser.feed(TEXT_STREAM[:first_delta_end - 1]) == TEXT_CHUNKS[:1]  # message_start only, so far
    assert parser.feed(TEXT_STREAM[first_delta_end - 1:first_delta_end]) == TEXT_CHUNKS[1:2]


TOOL_STREAM = sse(
    START, block_start(0, {"type": "text", "text": ""}), delta(0, type="text_delta", text="Checking."),
    {"type": "content_block_stop", "index": 0},
    block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
    delta(1, type="input_json_delta", partial_json=""), delta(1, type="input_json_delta", partial_json='{"city"'),
    delta(1, type="input_json_delta", partial_json=': "Paris"}'), {"type": "content_block_stop", "index": 1},
    block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}),
    delta(2, type="input_json_delta", partial_json="{}"), {"type": "content_block_stop", "index": 2},
    message_delta("tool_use", 40), STOP)


def test_tool_use_stream() -> None:
    chunks = parse(TOOL_STREAM)
    assert [c["choices"][0]["delta"] for c in chunks[:-2]] == [
        {"role": "assistant", "content": ""},
        {"content": "Checking."},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function",
                         "function": {"name": "get_time", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]
    assert chunks[-2] == chunk({}, "tool_calls")
    assert chunks[-1]["usage"]["completion_tokens"] == 40


THINKING_STREAM = sse(
    START, block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, type="thinking_delta", thinking="Short"), delta(0, type="signature_delta", signature="sig-1"),
    {"type": "content_block_stop", "index": 0}, block_start(1, {"type": "text", "text": ""}),
    delta(1, type="text_delta", text="Hi"), {"type": "content_block_stop", "index": 1},
    message_delta("end_turn", 3), STOP)


def test_thinking_stream_strict_leaves_thinking_out() -> None:
    assert [c["choices"][0]["delta"] for c in parse(THINKING_STREAM)[:-2]] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]


def test_thinking_stream_not_strict_carries_content_blocks() -> None:
    assert [c["choices"][0]["delta"] for c in parse(THINKING_STREAM, LOOSE)[:-2]] == [
        {"role": "assistant", "content": ""},
        {"content_blocks": [{"index": 0, "type": "thinking", "thinking": "", "signature": ""}]},
        {"content_blocks": [{"index": 0, "delta": {"type": "thinking_delta", "thinking": "Short"}}]},
        {"content_blocks": [{"index": 0, "delta": {"type": "signature_delta", "signature": "sig-1"}}]},
        {"content": "Hi"},
    ]


def test_cumulative_usage_in_message_delta_wins() -> None:
    later = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
             "usage": {"input_tokens": 12, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5,
                       "output_tokens": 64}}
    chunks = parse(sse(START, later, STOP))
    assert chunks[-2] == chunk({}, "length")
    assert chunks[-1] == usage_chunk({"prompt_tokens": 47, "completion_tokens": 64, "total_tokens": 111,
                                      "prompt_tokens_details": {"cached_tokens": 30},
                                      "cache_creation_input_tokens": 5})


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
BROKEN = {"message": "anthropic error: Overloaded", "type": "api_error", "param": None, "code": "overloaded_error"}


def test_error_event_breaks_the_stream() -> None:
    parser = CHAT.stream(FACTS)
    assert parser.feed(sse(START, block_start(0, {"type": "text", "text": ""}))) == [TEXT_CHUNKS[0]]
    with pytest.raises(UpstreamBroke) as broke:
        parser.feed(sse(delta(0, type="text_delta", text="Hel"), OVERLOADED))
    assert broke.value.error == BROKEN


def test_error_event_reaches_the_client_as_an_error_event() -> None:
    transform = StreamTransform(CHAT.stream(FACTS), OpenAIStream(), "anthropic", None)
    out = transform.feed(sse(START, OVERLOADED, STOP))
    assert out.endswith(b"data: " + json.dumps({"error": BROKEN}, separators=(",", ":")).encode() + b"\n\n")
    assert transform.broken and transform.finish() == b""


def test_a_stream_cut_before_message_stop_is_an_error() -> None:
    parser = AnthropicChunks(FACTS)
    parser.feed(TEXT_STREAM[:TEXT_STREAM.index(b"event: message_delta")])
    with pytest.raises(UpstreamBroke) as broke:
        parser.finish()
    assert broke.value.error["message"] == "anthropic error: the stream ended before message_stop"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "kind", "message", "expected_type", "code"), [
    (400, "invalid_request_error", "max_tokens: Field required", "invalid_request_error", None),
    (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
     "rate_limit_error", None),
    (529, "overloaded_error", "Overloaded", "api_error", "overloaded_error"),
])
def test_error_bodies_in_the_unified_shape(status: int, kind: str, message: str, expected_type: str,
                                          code: str | None) -> None:
    raw = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    expected = {"error": {"message": f"anthropic error: {message}", "type": expected_type, "param": None,
                          "code": code}, "provider": "anthropic"}
    assert unified_error("anthropic", status, raw) == expected
    translator = Translator(CHAT, OpenAIFront("chatComplete"), FACTS)
    answer = translator.answer(Answer.whole(status, raw, [("Content-Type", "application/json")]))
    assert answer.status == status and json.loads(answer.first_chunk) == expected


def test_whole_answer_through_the_translator() -> None:
    raw = json.dumps(message([{"type": "text", "text": "Hello"}])).encode()
    answer = Translator(CHAT, OpenAIFront("chatComplete"), FACTS).answer(
        Answer.whole(200, raw, [("Content-Type", "application/json")]))
    assert json.loads(answer.first_chunk)["choices"][0]["message"]["content"] == "Hello"


# --------------------------------------------------------------------------- the fake, as strict as Anthropic


FAKE_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def fake() -> Any:
    with FakeProvider() as provider:
        yield provider


def fake_post(fake: FakeProvider, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{fake.url}/v1/messages", json=body, headers={**FAKE_AUTH, **headers}, timeout=10)


def test_every_translated_request_above_is_accepted_by_the_fake(fake: FakeProvider) -> None:
    body = {"model": "claude-x", "tools": TOOLS, "temperature": 0.5, "user": "u", "stop": ["x"], "messages": [
        {"role": "system", "content": "Be brief."}, user("Weather?"),
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"P"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}
    response = fake_post(fake, native(body))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("body", "said"), [
    ({"messages": [user()]}, "max_tokens: Field required"),
    ({"max_tokens": 5, "messages": [user()], "seed": 1}, "seed: Extra inputs are not permitted"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, 'Unexpected role "system"'),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "Input tag 'image_url'"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": PNG}}]}]}, "media_type: Field required"),
    ({"max_tokens": 5, "messages": [user(), {"role": "assistant", "content": "ok"}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9"}]}]}, "unexpected `tool_use_id`"),
    ({"max_tokens": 5, "messages": [user(), {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}, user("x")]}, "without `tool_result`"),
    ({"max_tokens": 5, "messages": [user("")]}, "non-empty content"),
    ({"max_tokens": 5000, "messages": [user()], "thinking": {"type": "enabled", "budget_tokens": 1024},
      "tools": NATIVE_TOOLS, "tool_choice": {"type": "any"}}, "tool_choice forces tool use"),
])
def test_the_fake_refuses_what_anthropic_refuses(fake: FakeProvider, body: dict[str, Any], said: str) -> None:
    response = fake_post(fake, {"model": "claude-x", **body})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error" and said in response.json()["error"]["message"]


def test_the_fake_allows_consecutive_turns_and_an_assistant_first(fake: FakeProvider) -> None:
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "assistant", "content": "Hello"},
                                                               user("a"), user("b")]}
    assert fake_post(fake, body).status_code == 200


def test_the_fake_answers_forced_tools_and_thinking(fake: FakeProvider) -> None:
    forced = fake_post(fake, {"model": "claude-x", "max_tokens": 50, "messages": [user()], "tools": NATIVE_TOOLS,
                              "tool_choice": {"type": "tool", "name": "get_weather"}}).json()
    assert forced["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in forced["content"]] == [
        ("tool_use", "get_weather", {"city": "fake"})]
    thought = fake_post(fake, {"model": "claude-x", "max_tokens": 2000, "messages": [user()],
                               "thinking": {"type": "enabled", "budget_tokens": 1024}}).json()
    assert [b["type"] for b in thought["content"]] == ["thinking", "text"]
