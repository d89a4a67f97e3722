"""The Anthropic Messages front: requests to the unified chat format, and answers, streams and errors back."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from app.errors import BadRequest
from app.translate.base import CallFacts
from app.translate.call import StreamTransform
from app.translate.messages import FRONT
from app.translate.openai import CHAT as OPENAI_CHAT
from app.translate.sse import SSEReader

FACTS = CallFacts(provider="openai", model="gpt-4o", stream=True, id="chatcmpl-trace1", created=1700000000)
PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}


# --------------------------------------------------------------------------- requests


def test_front_bridges_through_the_unified_chat_endpoint() -> None:
    assert FRONT.endpoint == "chatComplete"


def test_a_whole_conversation_translates(caplog: pytest.LogCaptureFixture) -> None:
    anthropic = {
        "model": "gpt-4o", "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stop_sequences": ["END"], "metadata": {"user_id": "u-42"}, "stream": True,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric.",
                                                            "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these, and the weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "they want weather", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Lyon"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Thanks, and now?"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "no station"}, {"type": "text", "text": "try later"}]}]},
        ],
        "tools": [{"name": "weather", "description": "Weather of a city", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    with caplog.at_level(logging.WARNING, logger="app.translate.messages_request"):
        unified = FRONT.request(anthropic)
    assert unified == {
        "model": "gpt-4o", "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "user": "u-42",
        "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief.\nUse metric."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "weather", "arguments": '{"city":"Lyon"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no station\ntry later"},
            {"role": "user", "content": "Thanks, and now?"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                                    "parameters": WEATHER_SCHEMA}}],
        "tool_choice": "required", "parallel_tool_calls": False,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "/v1/messages: dropped top_k, which the unified chat format cannot carry"]


def test_a_string_system_and_string_contents_stay_strings() -> None:
    unified = FRONT.request(body(system="Be brief.", messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))
    assert unified == {"model": "gpt-4o", "max_tokens": 64, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}


def test_an_assistant_turn_of_tool_calls_only_has_null_content() -> None:
    unified = FRONT.request(body(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_9", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_9"}]}]))
    assert unified["messages"][1:] == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": ""}]


def test_images_of_a_tool_result_follow_in_a_user_message() -> None:
    unified = FRONT.request(body(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "screenshot:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]}]}]))
    assert unified["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}]}]


def test_documents_become_text_or_file_parts() -> None:
    unified = FRONT.request(body(messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
        {"type": "document", "title": "a.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]))
    assert unified["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "notes"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "tool", "name": "weather"}, {"tool_choice": {"type": "function", "function": {"name": "weather"}}}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "tool", "name": "weather", "disable_parallel_tool_use": False},
     {"tool_choice": {"type": "function", "function": {"name": "weather"}}}),
    (None, {}),
])
def test_tool_choice_forms(choice: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA, "strict": True}]
    unified = FRONT.request(body(tools=tools, **({"tool_choice": choice} if choice else {})))
    assert unified == {**body(), "tools": [{"type": "function", "function": {
        "name": "weather", "parameters": WEATHER_SCHEMA, "strict": True}}], **expected}


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert FRONT.request(body(tool_choice={"type": "auto"})) == body()


def test_output_config_format_becomes_a_json_schema_response_format(caplog: pytest.LogCaptureFixture) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    with caplog.at_level(logging.WARNING, logger="app.translate.messages_request"):
        unified = FRONT.request(body(output_config={"format": {"type": "json_schema", "schema": schema},
                                                    "effort": "high"}))
    assert unified["response_format"] == {"type": "json_schema",
                                          "json_schema": {"name": "output", "schema": schema, "strict": True}}
    assert [r.getMessage() for r in caplog.records] == [
        "/v1/messages: dropped output_config.effort, which the unified chat format cannot carry"]


def test_anthropic_only_fields_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.translate.messages_request"):
        unified = FRONT.request(body(thinking={"type": "enabled", "budget_tokens": 1024}, service_tier="auto",
                                     top_k=5))
    assert unified == body()
    assert [r.getMessage() for r in caplog.records] == [
        "/v1/messages: dropped service_tier, thinking, top_k, which the unified chat format cannot carry"]


@pytest.mark.parametrize(("anthropic", "message"), [
    ({"model": "m", "messages": []}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": "10", "messages": []}, "max_tokens: Input should be a valid integer"),
    ({"model": "m", "max_tokens": 10}, "messages: Field required"),
    (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role: Input should be 'user' or 'assistant'"),
    (body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages.0.content.0.source.type: image sources of type 'file' cannot be sent"),
    (body(messages=[{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search",
                                                        "input": {}}]}]),
     "messages.0.content.0.type: 'server_tool_use' blocks cannot be sent"),
    (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools.0.type: 'web_search_20250305' is a tool Anthropic runs itself"),
    (body(mcp_servers=[{"type": "url", "url": "https://mcp.example.com", "name": "x"}]),
     "mcp_servers: MCP servers run only on Anthropic's API"),
    (body(tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": "sometimes"}),
     "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"),
])
def test_what_cannot_be_sent_is_refused(anthropic: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        FRONT.request(anthropic)
    assert caught.value.status == 400
    assert caught.value.message.startswith(message)


# --------------------------------------------------------------------------- responses


def completion(message: dict[str, Any], finish: str | None, usage: dict[str, Any] | None = None,
               **choice: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"id": "chatcmpl-abc123", "object": "chat.completion", "created": 1,
                              "model": "gpt-4o-2024",
                              "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}]}
    if usage is not None:
        result["usage"] = usage
    return result


def test_a_completion_with_text_and_tool_calls_becomes_a_message() -> None:
    unified = completion({"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}]}, "tool_calls",
        {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
         "prompt_tokens_details": {"cached_tokens": 100}})
    assert FRONT.response(unified, FACTS) == {
        "id": "msg_abc123", "type": "message", "role": "assistant", "model": "gpt-4o-2024",
        "content": [{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 30, "cache_read_input_tokens": 100}}


@pytest.mark.parametrize(("finish", "choice", "reason", "sequence"), [
    ("stop", {}, "end_turn", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
    ("stop", {"stop_reason": 50256}, "end_turn", None),
    ("length", {}, "max_tokens", None),
    ("tool_calls", {}, "tool_use", None),
    ("content_filter", {}, "refusal", None),
    (None, {}, "end_turn", None),
])
def test_finish_reasons_become_stop_reasons(finish: str | None, choice: dict[str, Any], reason: str,
                                            sequence: str | None) -> None:
    answer = FRONT.response(completion({"role": "assistant", "content": "x"}, finish, **choice), FACTS)
    assert (answer["stop_reason"], answer["stop_sequence"]) == (reason, sequence)


def test_a_bare_answer_gets_the_calls_id_and_model_and_zero_usage() -> None:
    answer = FRONT.response({"choices": [{"message": {"role": "assistant", "content": None,
                                                      "refusal": "I can't help with that."},
                                          "finish_reason": "stop"}]}, FACTS)
    assert answer == {"id": "msg_trace1", "type": "message", "role": "assistant", "model": "gpt-4o",
                      "content": [{"type": "text", "text": "I can't help with that."}], "stop_reason": "end_turn",
                      "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}


def test_arguments_that_are_not_an_object_become_an_empty_input(caplog: pytest.LogCaptureFixture) -> None:
    unified = completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}, "tool_calls")
    assert FRONT.response(unified, FACTS)["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert "not a JSON object" in caplog.text


# --------------------------------------------------------------------------- streams


def events(data: bytes) -> list[tuple[str, Any]]:
    reader = SSEReader()
    return [(name, json.loads(text)) for name, text in reader.feed(data) + reader.finish()]


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_s1", "type": "message", "role": "assistant", "model": "gpt-4o-2024", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, Any]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> tuple[str, Any]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> tuple[str, Any]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def message_delta(reason: str, usage: dict[str, Any], sequence: str | None = None) -> tuple[str, Any]:
    return "message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                             "usage": usage}


STOP = ("message_stop", {"type": "message_stop"})


def test_text_then_tool_calls_stream_as_blocks_and_usage_waits_for_its_chunk() -> None:
    writer = FRONT.stream(FACTS)
    head = writer.write([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me"}), chunk({"content": " check."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "now", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ])
    assert events(head) == [
        START,
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "Let me"}),
        block_delta(0, {"type": "text_delta", "text": " check."}),
        block_stop(0),
        block_start(1, {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '{"city":'}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "call_b", "name": "now", "input": {}}),
        block_delta(2, {"type": "input_json_delta", "partial_json": "{}"}),
        block_stop(2),
    ]  # no message_delta yet: the usage chunk comes after the finish chunk
    tail = writer.write([{"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}])
    assert events(tail) == [message_delta("tool_use", {"input_tokens": 12, "output_tokens": 7})]
    assert events(writer.end()) == [STOP]


def test_a_stream_without_usage_closes_in_end() -> None:
    writer = FRONT.stream(FACTS)
    head = writer.write([chunk({"content": "Hi"}), chunk({}, "length")])
    assert events(head) == [START, block_start(0, {"type": "text", "text": ""}),
                            block_delta(0, {"type": "text_delta", "text": "Hi"}), block_stop(0)]
    assert events(writer.end()) == [message_delta("max_tokens", {"output_tokens": 0}), STOP]


def test_usage_on_the_finish_chunk_sends_message_delta_at_once() -> None:
    writer = FRONT.stream(FACTS)
    out = writer.write([chunk({"content": "Hi"}), chunk({}, "stop", usage=USAGE)])
    assert events(out)[-1] == message_delta("end_turn", {"input_tokens": 12, "output_tokens": 7})
    assert events(writer.end()) == [STOP]


def test_a_stream_cut_short_still_closes_its_block_and_message() -> None:
    writer = FRONT.stream(FACTS)
    writer.write([chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}]})])
    assert events(writer.end()) == [block_stop(0), message_delta("end_turn", {"output_tokens": 0}), STOP]


def test_an_empty_stream_is_still_a_whole_message() -> None:
    writer = FRONT.stream(FACTS)
    assert events(writer.write([])) == []
    start = ("message_start", {**START[1], "message": {**START[1]["message"], "id": "msg_trace1",
                                                       "model": "gpt-4o"}})
    assert events(writer.end()) == [start, message_delta("end_turn", {"output_tokens": 0}), STOP]


def test_a_stream_error_is_an_anthropic_error_event() -> None:
    writer = FRONT.stream(FACTS)
    out = writer.error({"message": "openai error: boom", "type": "server_error", "param": None, "code": None})
    assert out == (b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
                   b'"message":"openai error: boom"}}\n\n')


def test_an_openai_stream_becomes_anthropic_events_through_the_transform() -> None:
    sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [
        chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"),
        {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}]) + b"data: [DONE]\n\n"
    transform = StreamTransform(OPENAI_CHAT.stream(FACTS), FRONT.stream(FACTS), "openai", None)
    out = b"".join(transform.feed(sse[i:i + 7]) for i in range(0, len(sse), 7)) + transform.finish()
    assert events(out) == [START, block_start(0, {"type": "text", "text": ""}),
                           block_delta(0, {"type": "text_delta", "text": "Hel"}),
                           block_delta(0, {"type": "text_delta", "text": "lo"}), block_stop(0),
                           message_delta("end_turn", {"input_tokens": 12, "output_tokens": 7}), STOP]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("unified", "kind"), [
    ({"type": "invalid_request_error", "code": None}, "invalid_request_error"),
    ({"type": "authentication_error", "code": "invalid_api_key"}, "authentication_error"),
    ({"type": "permission_error", "code": None}, "permission_error"),
    ({"type": "not_found_error", "code": "model_not_found"}, "not_found_error"),
    ({"type": "rate_limit_error", "code": "RESOURCE_EXHAUSTED"}, "rate_limit_error"),
    ({"type": "insufficient_quota", "code": "insufficient_quota"}, "rate_limit_error"),
    ({"type": "api_error", "code": "overloaded_error"}, "overloaded_error"),
    ({"type": "server_error", "code": None}, "api_error"),
    ({"type": "timeout_error", "code": None}, "timeout_error"),
    ({"type": "fake_error", "code": None}, "api_error"),
])
def test_unified_errors_become_anthropic_errors(unified: dict[str, Any], kind: str) -> None:
    error = {"error": {"message": "openai error: nope", "param": None, **unified}, "provider": "openai"}
    assert FRONT.error(error) == {"type": "error", "error": {"type": kind, "message": "openai error: nope"}}


def test_whole_calls_sharing_index_zero_are_separate_blocks() -> None:
    writer = FRONT.stream(FACTS)
    out = writer.write([
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "a", "arguments": '{"x":1}'}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "b", "arguments": '{"y":2}'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "{}"}, "id": "c3"}]}),
    ])
    assert events(out)[1:] == [
        block_start(0, {"type": "tool_use", "id": "c1", "name": "a", "input": {}}),
        block_delta(0, {"type": "input_json_delta", "partial_json": '{"x":1}'}), block_stop(0),
        block_start(1, {"type": "tool_use", "id": "c2", "name": "b", "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '{"y":2}'}), block_stop(1),
        block_start(2, {"type": "tool_use", "id": "c3", "name": "", "input": {}}),
        block_delta(2, {"type": "input_json_delta", "partial_json": "{}"})]
