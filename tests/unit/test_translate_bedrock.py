"""Bedrock translation (app.translate.bedrock): Converse requests, answers, event streams, embeddings; the fake."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from app.errors import BadRequest
from app.http.body import Body
from app.pipeline.upstream import prepare
from app.providers import aws
from app.providers.registry import get_provider
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.bedrock import CHAT, EMBED, model_path
from tests.fakes import fake_bedrock
from tests.fakes.fake_bedrock import encode_frame, event_frame, exception_frame
from tests.fakes.provider import FakeProvider

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
FACTS = CallFacts(provider="bedrock", model=MODEL, stream=False, id="chatcmpl-1", created=1700000000)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "description": "Weather of a city", "strict": True,
                             "inputSchema": {"json": WEATHER["function"]["parameters"]}}}


def chat(**body: Any) -> NativeRequest:
    return CHAT.request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}, FACTS)


# --------------------------------------------------------------------------- registry


def test_adapters_are_registered_under_the_names_exported() -> None:
    assert get_provider("bedrock").adapters["chatComplete"] == "app.translate.bedrock:CHAT"
    assert get_provider("bedrock").adapters["embed"] == "app.translate.bedrock:EMBED"


# --------------------------------------------------------------------------- chat requests


def test_full_conversation_golden() -> None:
    body = {
        "model": MODEL, "max_completion_tokens": 300, "max_tokens": 999, "temperature": 0.2, "top_p": 0.9,
        "stop": "END", "top_k": 40, "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "unknown"}]},
            {"role": "user", "content": "Thanks"},
        ],
    }
    native = CHAT.request(body, FACTS)
    assert native.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert native.from_root is False and dict(native.headers) == {}
    assert native.body == {
        "messages": [
            {"role": "user", "content": [{"text": "Weather here?"},
                                         {"image": {"format": "png", "source": {"bytes": PNG}}}]},
            {"role": "assistant", "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "unknown"}]}},
                {"text": "Thanks"}]},
        ],
        "system": [{"text": "Be brief."}, {"text": "Use metric units."}],
        "inferenceConfig": {"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
        "toolConfig": {"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}},
        "additionalModelRequestFields": {"top_k": 40},
    }


def test_arn_goes_into_the_path_encoded_whole_and_streams_use_converse_stream() -> None:
    native = CHAT.request({"model": ARN, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                         replace(FACTS, stream=True))
    assert native.path == ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
                           "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream")
    assert native.body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


def test_catalog_model_prefix_is_not_sent() -> None:
    assert chat(model="@my-bedrock/amazon.nova-lite-v1:0").path == "/model/amazon.nova-lite-v1%3A0/converse"


def test_model_is_required() -> None:
    with pytest.raises(BadRequest, match="bedrock needs a model"):
        CHAT.request({"messages": [{"role": "user", "content": "hi"}]}, replace(FACTS, model=None))


def test_same_role_turns_are_merged_and_empty_messages_dropped() -> None:
    native = chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                            {"role": "assistant", "content": ""}, {"role": "user", "content": "  "},
                            {"role": "user", "content": [{"type": "text", "text": "c"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "d"}]}])
    assert native.body["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}, {"text": "c"}]},
                                       {"role": "assistant", "content": [{"text": "d"}]}]


def test_max_tokens_and_stop_list() -> None:
    config = chat(max_tokens=50, stop=["a", "b"]).body["inferenceConfig"]
    assert config == {"maxTokens": 50, "stopSequences": ["a", "b"]}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"auto": {}}),
    ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert chat(tools=[WEATHER], tool_choice=choice).body["toolConfig"] == {"tools": [WEATHER_SPEC],
                                                                            "toolChoice": expected}


def test_tools_without_choice_and_minimal_function() -> None:
    tool = {"type": "function", "function": {"name": "ping"}}
    assert chat(tools=[tool]).body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "ping", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]}


def test_tool_choice_none_drops_the_tools_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        native = chat(tools=[WEATHER], tool_choice="none")
    assert "toolConfig" not in native.body
    assert "tool_choice none" in caplog.text


def test_tool_choice_none_keeps_tools_that_the_history_needs(caplog: pytest.LogCaptureFixture) -> None:
    messages = [{"role": "user", "content": "w?"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        native = chat(messages=messages, tools=[WEATHER], tool_choice="none")
    assert native.body["toolConfig"] == {"tools": [WEATHER_SPEC]}
    assert "toolChoice auto" in caplog.text


@pytest.mark.parametrize("tools", [[{"type": "web_search"}], [{"type": "function", "function": {}}]])
def test_non_function_or_nameless_tools_are_refused(tools: list[Any]) -> None:
    with pytest.raises(BadRequest, match=r"tools\[0\]"):
        chat(tools=tools)


def test_response_format_json_schema_becomes_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    native = chat(response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                                          "strict": True}})
    assert native.body["outputConfig"] == {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "schema": json.dumps(schema, separators=(",", ":")), "name": "answer"}}}}


def test_response_format_text_sends_nothing_and_json_object_is_refused() -> None:
    assert "outputConfig" not in chat(response_format={"type": "text"}).body
    with pytest.raises(BadRequest, match="json_object is not supported by bedrock.*json_schema"):
        chat(response_format={"type": "json_object"})


def test_n_above_one_is_refused_and_one_is_fine() -> None:
    assert chat(n=1).body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    with pytest.raises(BadRequest, match="n > 1 is not supported"):
        chat(n=2)


def test_legacy_functions_are_refused() -> None:
    with pytest.raises(BadRequest, match="functions is the deprecated form of tools"):
        chat(functions=[{"name": "f"}])


@pytest.mark.parametrize(("model", "expected"), [
    ("us.anthropic.claude-3-5-haiku-20241022-v1:0", {"top_k": 5}),
    ("amazon.nova-pro-v1:0", {"inferenceConfig": {"topK": 5}}),
])
def test_top_k_goes_where_the_model_family_documents_it(model: str, expected: dict[str, Any]) -> None:
    assert chat(model=model, top_k=5).body["additionalModelRequestFields"] == expected


def test_top_k_is_dropped_with_a_warning_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        native = chat(model="meta.llama3-70b-instruct-v1:0", top_k=5)
    assert "additionalModelRequestFields" not in native.body
    assert "top_k dropped" in caplog.text


def test_parameters_converse_lacks_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        native = chat(seed=1, presence_penalty=0.5, frequency_penalty=0.1, user="u-1", logprobs=False,
                      parallel_tool_calls=True, stream_options={"include_usage": True}, metadata=None)
    assert native.body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert "parameters dropped (Converse has no equivalent): frequency_penalty, presence_penalty, seed, user" \
        in caplog.text


def test_no_warning_when_nothing_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        chat(temperature=0.5)
    assert caplog.text == ""


@pytest.mark.parametrize(("url", "fragment"), [
    ("https://example.com/cat.png", "cannot fetch https URLs; send the image as a data URL"),
    ("data:image/bmp;base64,AAAA", "png, jpeg, gif and webp images, not image/bmp"),
    ("data:image/png,rawbytes", "must be base64-encoded"),
    ("data:image/png;base64,not base64!", "not valid base64"),
])
def test_images_bedrock_cannot_take_are_a_400_explaining(url: str, fragment: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(BadRequest) as caught:
        chat(messages=[{"role": "user", "content": content}])
    assert "messages[0].content[0]" in caught.value.message and fragment in caught.value.message


def test_jpeg_image_given_as_a_bare_string() -> None:
    content = [{"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG}"}]
    assert chat(messages=[{"role": "user", "content": content}]).body["messages"][0]["content"] == [
        {"image": {"format": "jpeg", "source": {"bytes": PNG}}}]


@pytest.mark.parametrize(("messages", "fragment"), [
    ([], "messages must be a non-empty list"),
    ([{"role": "critic", "content": "x"}], "messages[0].role: 'critic' is not a role bedrock takes"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
     "content parts of type 'input_audio' are not supported by bedrock"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
     "messages[1].tool_calls[0].function.arguments is not valid JSON"),
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id is required"),
])
def test_messages_that_cannot_be_sent_are_a_400(messages: list[Any], fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        chat(messages=messages)
    assert fragment in caught.value.message


# --------------------------------------------------------------------------- chat answers


def test_text_answer_golden_with_cache_usage() -> None:
    native = {"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there"}]}},
              "stopReason": "end_turn", "metrics": {"latencyMs": 10},
              "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 1115, "cacheReadInputTokens": 1000,
                        "cacheWriteInputTokens": 100}}
    assert CHAT.response(native, FACTS) == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": MODEL, "provider": "bedrock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1112, "completion_tokens": 3, "total_tokens": 1115,
                  "prompt_tokens_details": {"cached_tokens": 1000}, "cache_creation_input_tokens": 100},
    }


def test_tool_use_answer_golden() -> None:
    native = {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Zürich"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}}
    assert CHAT.response(native, FACTS)["choices"] == [{
        "index": 0, "logprobs": None, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city":"Zürich"}'}}]}}]
    assert CHAT.response(native, FACTS)["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"),
    ("model_context_window_exceeded", "length"), ("malformed_model_output", "stop"),
])
def test_stop_reasons(reason: str, finish: str) -> None:
    native = {"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": reason}
    answer = CHAT.response(native, FACTS)
    assert answer["choices"][0]["finish_reason"] == finish
    assert "usage" not in answer


def test_reasoning_rides_along_only_when_not_strict() -> None:
    native = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "think", "signature": "sig"}}}, {"text": "42"}]}},
        "stopReason": "end_turn"}
    assert CHAT.response(native, FACTS)["choices"][0]["message"] == {"role": "assistant", "content": "42"}
    loose = CHAT.response(native, replace(FACTS, strict=False))
    assert loose["choices"][0]["message"] == {"role": "assistant", "content": "42", "reasoning_content": "think"}


# --------------------------------------------------------------------------- event streams


def test_fake_encoder_matches_published_frames_and_botocore_decodes_it() -> None:
    # The two encodings of {"foo": "bar"} from the AWS event stream test suite.
    assert encode_frame([], b'{"foo": "bar"}') == (bytes([0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138])
                                                   + b'{"foo": "bar"}' + bytes([174, 114, 88, 228]))
    assert encode_frame([("content-type", "application/json")], b'{"foo": "bar"}') == (
        bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12]) + b"content-type" + bytes([7, 0, 16])
        + b"application/json" + b'{"foo": "bar"}' + bytes([111, 162, 191, 59]))
    buffer = EventStreamBuffer()
    buffer.add_data(event_frame("contentBlockDelta", {"delta": {"text": "ça"}}) + exception_frame("x", "y"))
    first, second = list(buffer)
    assert first.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                             ":message-type": "event"}
    assert json.loads(first.payload)["delta"] == {"text": "ça"}
    assert second.headers[":message-type"] == "exception" and json.loads(second.payload) == {"message": "y"}


TEXT_STREAM = b"".join([
    event_frame("messageStart", {"role": "assistant"}),
    event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bon"}}),
    event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "jour 😀"}}),
    event_frame("contentBlockStop", {"contentBlockIndex": 0}),
    event_frame("messageStop", {"stopReason": "max_tokens"}),
    event_frame("metadata", {"usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11},
                             "metrics": {"latencyMs": 5}}),
])


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "provider": "bedrock", "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Bon"}),
    chunk({"content": "jour 😀"}),
    chunk({}, "length"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
     "provider": "bedrock", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
]


def run(data: list[bytes], facts: CallFacts = FACTS) -> list[dict[str, Any]]:
    parser = CHAT.stream(facts)
    chunks = [c for piece in data for c in parser.feed(piece)]
    return chunks + parser.finish()


def test_text_stream_golden() -> None:
    assert run([TEXT_STREAM]) == TEXT_CHUNKS


def test_text_stream_split_at_every_byte() -> None:
    for cut in range(1, len(TEXT_STREAM)):
        assert run([TEXT_STREAM[:cut], TEXT_STREAM[cut:]]) == TEXT_CHUNKS, cut
    assert run([TEXT_STREAM[i:i + 1] for i in range(len(TEXT_STREAM))]) == TEXT_CHUNKS


def test_each_frame_gives_its_chunks_as_it_arrives() -> None:
    parser = CHAT.stream(FACTS)
    first = event_frame("messageStart", {"role": "assistant"})
    assert parser.feed(first[:-1]) == []
    assert parser.feed(first[-1:]) == [TEXT_CHUNKS[0]]


def test_tool_use_stream_golden() -> None:
    data = b"".join([
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me check."}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("contentBlockStart", {"contentBlockIndex": 1, "start": {
            "toolUse": {"toolUseId": "tooluse_a", "name": "get_weather"}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 1}),
        event_frame("contentBlockStart", {"contentBlockIndex": 2, "start": {
            "toolUse": {"toolUseId": "tooluse_b", "name": "get_time"}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 2}),
        event_frame("messageStop", {"stopReason": "tool_use"}),
        event_frame("metadata", {"usage": {"inputTokens": 20, "outputTokens": 30, "totalTokens": 50,
                                           "cacheReadInputTokens": 4}}),
    ])
    assert run([data]) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "tooluse_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "tooluse_b", "type": "function",
                               "function": {"name": "get_time", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
         "provider": "bedrock", "choices": [],
         "usage": {"prompt_tokens": 24, "completion_tokens": 30, "total_tokens": 54,
                   "prompt_tokens_details": {"cached_tokens": 4}}},
    ]


def test_reasoning_deltas_only_when_not_strict() -> None:
    data = b"".join([event_frame("messageStart", {"role": "assistant"}),
                     event_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                                       "delta": {"reasoningContent": {"text": "hmm"}}}),
                     event_frame("contentBlockDelta", {"contentBlockIndex": 0,
                                                       "delta": {"reasoningContent": {"signature": "sig"}}}),
                     event_frame("messageStop", {"stopReason": "end_turn"})])
    assert run([data]) == [chunk({"role": "assistant", "content": ""}), chunk({}, "stop")]
    assert run([data], replace(FACTS, strict=False)) == [chunk({"role": "assistant", "content": ""}),
                                                         chunk({"reasoning_content": "hmm"}), chunk({}, "stop")]


THROTTLED = {"message": "bedrock error: Too many requests, please wait before trying again.",
             "type": "rate_limit_error", "param": None, "code": "ThrottlingException"}


def test_exception_frame_breaks_the_stream_after_the_chunks_before_it() -> None:
    data = TEXT_STREAM[:len(event_frame("messageStart", {"role": "assistant"}))] + b"".join([
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bon"}}),
        exception_frame("throttlingException", "Too many requests, please wait before trying again.")])
    parser = CHAT.stream(FACTS)
    assert parser.feed(data) == TEXT_CHUNKS[:2]
    with pytest.raises(UpstreamBroke) as caught:
        parser.finish()
    assert caught.value.error == THROTTLED


def test_exception_frame_alone_breaks_at_once() -> None:
    parser = CHAT.stream(FACTS)
    with pytest.raises(UpstreamBroke) as caught:
        parser.feed(exception_frame("modelStreamErrorException", "The model stream failed."))
    assert caught.value.error == {"message": "bedrock error: The model stream failed.", "type": "api_error",
                                  "param": None, "code": "ModelStreamErrorException"}


def test_error_frame_breaks_too() -> None:
    frame = encode_frame([(":message-type", "error"), (":error-code", "InternalFailure"),
                          (":error-message", "boom")], b"")
    with pytest.raises(UpstreamBroke) as caught:
        CHAT.stream(FACTS).feed(frame)
    assert caught.value.error["message"] == "bedrock error: boom"
    assert caught.value.error["code"] == "InternalFailure"


@pytest.mark.parametrize("cut", [len(TEXT_STREAM) - 1, len(TEXT_STREAM) - len(event_frame("metadata", {})) - 40])
def test_a_stream_cut_short_breaks_at_the_end(cut: int) -> None:
    parser = CHAT.stream(FACTS)
    parser.feed(TEXT_STREAM[:cut])
    with pytest.raises(UpstreamBroke, match="ended before the answer was complete"):
        parser.finish()


def test_corrupt_frame_breaks_the_stream() -> None:
    frame = bytearray(event_frame("messageStart", {"role": "assistant"}))
    frame[-1] ^= 0xFF
    with pytest.raises(UpstreamBroke, match="event stream is corrupt"):
        CHAT.stream(FACTS).feed(bytes(frame))


# --------------------------------------------------------------------------- embeddings

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"


def embed(**body: Any) -> NativeRequest:
    return EMBED.request(body, replace(FACTS, model=body.get("model")))


def test_titan_request_golden() -> None:
    native = embed(model=TITAN, input=["hello"], dimensions=256, encoding_format="float")
    assert native == NativeRequest("/model/amazon.titan-embed-text-v2%3A0/invoke",
                                   {"inputText": "hello", "dimensions": 256})


def test_titan_takes_one_input_per_call() -> None:
    with pytest.raises(BadRequest, match="one text per call and 2 were sent; send one request per text"):
        embed(model=TITAN, input=["a", "b"])


def test_cohere_request_golden() -> None:
    assert embed(model=COHERE, input=["a", "b"]).body == {"texts": ["a", "b"], "input_type": "search_document"}
    assert embed(model="us.cohere.embed-v4:0", input="q", input_type="search_query", dimensions=512) == NativeRequest(
        "/model/us.cohere.embed-v4%3A0/invoke", {"texts": ["q"], "input_type": "search_query", "output_dimension": 512})


def test_embedding_inputs_and_models_bedrock_cannot_take() -> None:
    with pytest.raises(BadRequest, match="not token ids"):
        embed(model=COHERE, input=[1, 2, 3])
    with pytest.raises(BadRequest, match="amazon.titan-embed-\\* and cohere.embed-\\* models, not meta.llama"):
        embed(model="meta.llama3", input="x")


def test_user_is_dropped_with_a_warning_and_base64_left_to_the_front(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "app.translate.bedrock"):
        native = embed(model=TITAN, input="x", encoding_format="base64", user="u")
    assert "embedding parameters dropped: user" in caplog.text
    assert "encoding_format" not in caplog.text and "encoding_format" not in json.dumps(native.body)


def test_embedding_answers_golden() -> None:
    facts = replace(FACTS, model=TITAN)
    assert EMBED.response({"embedding": [0.1, -0.2], "inputTextTokenCount": 3}, facts) == {
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": TITAN, "provider": "bedrock", "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    facts = replace(FACTS, model=COHERE)
    floats = {"id": "x", "texts": ["a", "b"], "response_type": "embeddings_floats", "embeddings": [[1.0], [2.0]]}
    by_type = {"id": "x", "response_type": "embeddings_by_type", "embeddings": {"float": [[1.0], [2.0]]}}
    expected = {"object": "list", "model": COHERE, "provider": "bedrock",
                "data": [{"object": "embedding", "index": 0, "embedding": [1.0]},
                         {"object": "embedding", "index": 1, "embedding": [2.0]}]}
    assert EMBED.response(floats, facts) == expected
    assert EMBED.response(by_type, facts) == expected


# --------------------------------------------------------------------------- the fake refuses what Converse refuses


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def post(fake: FakeProvider, path: str, body: Any, secret: str = fake_bedrock.SECRET_KEY,
         headers: dict[str, str] | None = None) -> requests.Response:
    """Sign and send a request to the fake the way the gateway does."""
    prepared = prepare("POST", fake.url + path, {"Content-Type": "application/json", **(headers or {})},
                       Body(json.dumps(body).encode()), False)
    aws.sign_request(prepared, Credentials(fake_bedrock.ACCESS_KEY, secret), "us-east-1")
    with requests.Session() as session:
        return session.send(prepared, timeout=5)


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "must start with a user message"),
    ({"messages": []}, "must start with a user message"),
    ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "must start with a user message"),
    ({"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
     "must alternate between user and assistant roles"),
    ({"messages": [{"role": "user", "content": []}]}, "content field in the Message object at messages.0 is empty"),
    ({"messages": [{"role": "user", "content": [{"text": " "}]}]}, "at messages.0.content.0 is blank"),
    ({"messages": [{"role": "user", "content": [{"txt": "a"}]}]}, 'Unknown parameter in messages[0].content[0]: "txt"'),
    ({"messages": [{"role": "user", "content": [{"text": "a"}]}], "inferenceConfig": {"topK": 3}},
     'Unknown parameter in inferenceConfig: "topK"'),
    ({"messages": [{"role": "user", "content": [{"text": "a"}]}], "seed": 3}, 'Unknown parameter in input: "seed"'),
    ({"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": []}}]}]},
     "toolConfig field must be defined"),
])
def test_fake_refuses_what_converse_refuses(fake: FakeProvider, body: dict[str, Any], fragment: str) -> None:
    res = post(fake, "/model/m/converse", body)
    assert res.status_code == 400
    assert res.headers["x-amzn-ErrorType"].startswith("ValidationException:")
    assert fragment in res.json()["message"]


def test_fake_refuses_a_bad_signature_and_a_tampered_body(fake: FakeProvider) -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "a"}]}]}
    res = post(fake, "/model/m/converse", body, secret="wrong")
    assert (res.status_code, res.json()) == (403, {"message": fake_bedrock.SIGNATURE_MISMATCH})
    assert res.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
    prepared = prepare("POST", fake.url + "/model/m/converse", {"Content-Type": "application/json"},
                       Body(json.dumps(body).encode()), False)
    aws.sign_request(prepared, Credentials(fake_bedrock.ACCESS_KEY, fake_bedrock.SECRET_KEY), "us-east-1")
    prepared.body = prepared.body.replace(b'"a"', b'"b"')  # type: ignore[union-attr]
    with requests.Session() as session:
        assert session.send(prepared, timeout=5).status_code == 403


def test_fake_answers_and_streams_as_converse_does(fake: FakeProvider) -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "a"}]}]}
    answer = post(fake, f"/model/{ARN.replace(':', '%3A').replace('/', '%2F')}/converse", body).json()
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": fake_bedrock.BEDROCK_TEXT}]}
    assert answer["stopReason"] == "end_turn"
    res = post(fake, "/model/m/converse-stream", body)
    assert res.headers["Content-Type"] == fake_bedrock.EVENTSTREAM
    chunks = run([res.content])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
        fake_bedrock.BEDROCK_TEXT
    broken = post(fake, "/model/m/converse-stream", body, headers={"x-fake-stream-error": "throttling"})
    with pytest.raises(UpstreamBroke) as caught:
        run([broken.content])
    assert caught.value.error == THROTTLED


@pytest.mark.parametrize("model", [ARN, "odd id/ü%:1~x", "provisioned-model+(a)"])
def test_any_model_id_reaches_the_fake_as_signed(fake: FakeProvider, model: str) -> None:
    # requests' requote_uri and urllib3 must leave the encoded path alone, or the signature breaks.
    path = model_path(model, "converse")
    res = post(fake, path, {"messages": [{"role": "user", "content": [{"text": "a"}]}]})
    assert res.status_code == 200, res.text
    assert fake.requests[-1].path == path
