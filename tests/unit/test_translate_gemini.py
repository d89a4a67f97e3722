"""The Gemini API and Vertex AI adapters: requests, answers, streams, embeddings, errors; golden and via the fake."""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from app.errors import BadRequest
from app.providers.registry import get_provider
from app.translate import _load
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.call import StreamTransform
from app.translate.errors import unified_error
from app.translate.fronts import OpenAIFront, OpenAIStream
from app.translate.gemini import GOOGLE_CHAT, GOOGLE_EMBED, VERTEX_CHAT, VERTEX_EMBED, GeminiChunks, gemini_schema
from tests.fakes.fake_gemini import GEMINI_TEXT
from tests.fakes.provider import FakeProvider, _vector

FACTS = CallFacts(provider="google", model="gemini-2.0-flash", stream=False, id="chatcmpl-1", created=1700000000)
STREAM = replace(FACTS, stream=True)
VERTEX_OPTIONS = {"vertex_project_id": "my-proj", "vertex_region": "us-central1"}
VFACTS = replace(FACTS, provider="vertex-ai", options=VERTEX_OPTIONS)
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
KEY = "AIza-test-key-0123456789"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def send(fake: FakeProvider, native: NativeRequest, vertex: bool = False, **kwargs: Any) -> requests.Response:
    """Send a native request to the fake as the gateway would (auth headers included)."""
    headers = {"Authorization": "Bearer ya29.token"} if vertex else {"x-goog-api-key": KEY}
    headers.update(kwargs.pop("headers", {}))
    return requests.post(fake.url + native.path, json=native.body, headers=headers, timeout=10, **kwargs)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------- registry


def test_the_registry_names_these_adapters() -> None:
    from app.translate.vertex import CHAT as VERTEX_PUBLISHERS

    assert _load(get_provider("google").adapters["chatComplete"]) is GOOGLE_CHAT
    assert _load(get_provider("google").adapters["embed"]) is GOOGLE_EMBED
    assert _load(get_provider("vertex-ai").adapters["chatComplete"]) is VERTEX_PUBLISHERS  # Gemini, or Claude by model
    assert _load(get_provider("vertex-ai").adapters["embed"]) is VERTEX_EMBED


# --------------------------------------------------------------------------- chat requests


def test_a_full_request_translates_to_generate_content() -> None:
    body = {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
            ]},
            {"role": "assistant", "content": "Un chat."},
            {"role": "user", "content": "Merci"},
        ],
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 10, "max_completion_tokens": 200, "stop": "END",
        "n": 2, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
    }
    assert GOOGLE_CHAT.request(body, FACTS) == NativeRequest("/v1beta/models/gemini-2.0-flash:generateContent", {
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp"}},
            ]},
            {"role": "model", "parts": [{"text": "Un chat."}]},
            {"role": "user", "parts": [{"text": "Merci"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "seed": 7, "presencePenalty": 0.1,
                             "frequencyPenalty": 0.2, "candidateCount": 2, "maxOutputTokens": 200,
                             "stopSequences": ["END"]},
    })


@pytest.mark.parametrize(("model", "path"), [
    ("gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("models/gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("tunedModels/my-tune", "/v1beta/tunedModels/my-tune:generateContent"),
    ("../../v1/files?x=1", "/v1beta/models/..%2F..%2Fv1%2Ffiles%3Fx%3D1:generateContent"),
])
def test_the_model_names_the_path_once(model: str, path: str) -> None:
    assert GOOGLE_CHAT.request({"messages": [user("hi")]}, replace(FACTS, model=model)).path == path


def test_a_stream_asks_for_server_sent_events() -> None:
    native = GOOGLE_CHAT.request({"messages": [user("hi")], "stream": True}, STREAM)
    assert native.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


def test_vertex_paths_carry_project_and_region() -> None:
    assert VERTEX_CHAT.request({"messages": [user("hi")]}, VFACTS).path == (
        "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent")
    assert VERTEX_CHAT.request({"messages": [user("hi")]}, replace(VFACTS, stream=True)).path == (
        "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.0-flash"
        ":streamGenerateContent?alt=sse")


@pytest.mark.parametrize(("options", "header"), [
    ({"vertex_region": "us-central1"}, "x-portkey-vertex-project-id"),
    ({"vertex_project_id": "my-proj"}, "x-portkey-vertex-region"),
])
def test_vertex_without_project_or_region_is_a_bad_request(options: dict[str, str], header: str) -> None:
    for adapter in (VERTEX_CHAT, VERTEX_EMBED):
        with pytest.raises(BadRequest, match=header):
            adapter.request({"messages": [user("hi")], "input": "x"}, replace(VFACTS, options=options))


def test_a_request_without_a_model_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="needs a model"):
        GOOGLE_CHAT.request({"messages": [user("hi")]}, replace(FACTS, model=None))


def test_cloud_storage_urls_go_to_vertex_but_not_to_the_gemini_api() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "gs://bucket/photo.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}}]}]}
    assert VERTEX_CHAT.request(body, VFACTS).body["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/photo.jpg"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
    ]
    with pytest.raises(BadRequest, match="registered with the Gemini Files API"):
        GOOGLE_CHAT.request(body, FACTS)


@pytest.mark.parametrize(("part", "message"), [
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "only base64-encoded"),
    ({"type": "image_url", "image_url": {"url": "ftp://host/x.png"}}, "base64 data URL or an http"),
    ({"type": "video_url", "video_url": "x"}, "'video_url' is not supported by google"),
])
def test_media_google_cannot_take_is_refused(part: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        GOOGLE_CHAT.request({"messages": [{"role": "user", "content": [part]}]}, FACTS)


def test_tool_calls_and_results_become_function_calls_and_responses() -> None:
    body = {"messages": [
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "noon"}]},
        user("Thanks"),
    ]}
    assert GOOGLE_CHAT.request(body, FACTS).body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "get_time", "args": {}}}]},
        # Both answers in one turn (Gemini counts them against the calls), then the user's next words.
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                                   {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
                                   {"text": "Thanks"}]},
    ]


def test_a_tool_result_for_an_unknown_call_is_refused() -> None:
    with pytest.raises(BadRequest, match="tool_call_id of an earlier assistant message"):
        GOOGLE_CHAT.request({"messages": [user("x"), {"role": "tool", "tool_call_id": "nope", "content": "1"}]}, FACTS)


def test_tools_become_function_declarations_with_schemas_gemini_takes() -> None:
    body = {"messages": [user("hi")], "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "tools": [
                {"type": "function", "function": {
                    "name": "lookup", "description": "Find a thing", "strict": True,
                    "parameters": {"type": "object", "additionalProperties": False, "title": "Args",
                                   "properties": {"q": {"type": "string", "title": "Q"},
                                                  "limit": {"type": ["integer", "null"]}},
                                   "required": ["q"]}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
            ]}
    native = GOOGLE_CHAT.request(body, FACTS).body
    assert native["tools"] == [{"functionDeclarations": [
        {"name": "lookup", "description": "Find a thing",
         "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                                                         "limit": {"nullable": True, "type": "integer"}},
                        "required": ["q"]}},
        {"name": "now"},  # no parameters at all: Gemini refuses an OBJECT without properties
    ]}]
    assert native["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_tool_choice_maps_to_function_calling_modes(choice: Any, config: dict[str, Any]) -> None:
    body = {"messages": [user("hi")], "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert GOOGLE_CHAT.request(body, FACTS).body["toolConfig"] == {"functionCallingConfig": config}


def test_tools_other_than_functions_are_refused() -> None:
    with pytest.raises(BadRequest, match="'web_search' is not supported by google"):
        GOOGLE_CHAT.request({"messages": [user("hi")], "tools": [{"type": "web_search"}]}, FACTS)


def test_response_formats_become_response_mime_type_and_schema() -> None:
    def config(response_format: Any) -> Any:
        return GOOGLE_CHAT.request({"messages": [user("hi")], "response_format": response_format},
                                   FACTS).body.get("generationConfig")

    assert config({"type": "text"}) is None
    assert config({"type": "json_object"}) == {"responseMimeType": "application/json"}
    assert config({"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
        "additionalProperties": False}}}) == {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}
    with pytest.raises(BadRequest, match="response_format type 'grammar'"):
        config({"type": "grammar"})


def test_json_schemas_lose_what_gemini_refuses_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Answer", "type": "object",
        "$defs": {"Item": {"type": "object", "title": "Item", "properties": {"id": {"type": "string",
                                                                                    "format": "uuid"}}}},
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 3},
            "kind": {"const": "fruit"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "main": {"allOf": [{"$ref": "#/$defs/Item"}], "description": "The main one"},
            "size": {"type": "number", "exclusiveMinimum": 0, "format": "double"},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        },
        "required": ["items"], "additionalProperties": False,
    }
    with caplog.at_level(logging.WARNING, logger="app.translate.gemini"):
        assert gemini_schema(schema) == {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}}},
                          "maxItems": 3},
                "kind": {"enum": ["fruit"]},
                "note": {"nullable": True, "type": "string", "default": None},
                "main": {"type": "object", "properties": {"id": {"type": "string"}}, "description": "The main one"},
                "size": {"type": "number", "format": "double"},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "required": ["items"],
        }
    assert "dropped JSON-schema keys Gemini does not take: exclusiveMinimum, format=uuid" in caplog.text


def test_a_recursive_schema_is_cut_not_followed_forever() -> None:
    schema = {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
              "$ref": "#/$defs/Node"}
    depth, node = 0, gemini_schema(schema)
    while node.get("properties"):
        node, depth = node["properties"]["next"], depth + 1
    assert 10 < depth <= 33


def test_parameters_gemini_cannot_take_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    body = {"messages": [user("hi")], "user": "u-1", "logprobs": True, "parallel_tool_calls": False,
            "frobnicate": 1, "stream_options": {"include_usage": True}}
    with caplog.at_level(logging.WARNING, logger="app.translate.gemini"):
        native = GOOGLE_CHAT.request(body, FACTS)
    assert native.body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert "google: dropped parameters it does not take: frobnicate, logprobs, user, parallel_tool_calls=false" \
        in caplog.text


def test_roles_gemini_has_no_place_for_are_refused() -> None:
    with pytest.raises(BadRequest, match="'critic' is not supported by google"):
        GOOGLE_CHAT.request({"messages": [{"role": "critic", "content": "x"}]}, FACTS)


# --------------------------------------------------------------------------- chat answers


def test_an_answer_becomes_a_chat_completion() -> None:
    native = {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think", "thought": True}, {"text": "Hello"}, {"text": " there"}]},
            "finishReason": "STOP", "index": 0, "safetyRatings": []}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 30,
                          "cachedContentTokenCount": 8, "totalTokenCount": 47},
        "modelVersion": "gemini-2.5-flash-001", "responseId": "abc",
    }
    assert GOOGLE_CHAT.response(native, FACTS) == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gemini-2.5-flash-001",
        "provider": "google",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 35, "total_tokens": 47,
                  "prompt_tokens_details": {"cached_tokens": 8},
                  "completion_tokens_details": {"reasoning_tokens": 30}},
    }


def test_several_candidates_become_several_choices() -> None:
    native = {"candidates": [
        {"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": 1},
        {"content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP"}]}
    choices = GOOGLE_CHAT.response(native, FACTS)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"), (1, "B", "length")]


def test_function_calls_become_tool_calls() -> None:
    native = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}}]}, "finishReason": "STOP"}]}
    choice = GOOGLE_CHAT.response(native, FACTS)["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert all(CALL_ID.fullmatch(call["id"]) for call in calls)
    assert len({call["id"] for call in calls}) == 2
    assert choice == {"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": calls[1]["id"], "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}


def test_a_thought_signature_rides_in_the_tool_call_id_and_goes_back() -> None:
    signature = base64.b64encode(bytes(range(200))).decode()  # has + and / and padding
    native = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature}]}, "finishReason": "STOP"}]}
    call = GOOGLE_CHAT.response(native, FACTS)["choices"][0]["message"]["tool_calls"][0]
    assert re.fullmatch(r"call_[0-9a-f]{24}__thought__[A-Za-z0-9_-]+", call["id"])
    body = {"messages": [user("x"), {"role": "assistant", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]}
    contents = GOOGLE_CHAT.request(body, FACTS).body["contents"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": signature}]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "f", "response": {"content": "ok"}}}]


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("OTHER", "stop"), ("MALFORMED_FUNCTION_CALL", "stop"),
])
def test_finish_reasons_map(reason: str, finish: str) -> None:
    native = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert GOOGLE_CHAT.response(native, FACTS)["choices"][0]["finish_reason"] == finish


def test_a_blocked_prompt_is_a_content_filter_with_empty_content() -> None:
    native = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9,
                                                                              "totalTokenCount": 9}}
    answer = GOOGLE_CHAT.response(native, FACTS)
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": "content_filter"}]
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}


# --------------------------------------------------------------------------- streams


def sse(*payloads: Any, sep: bytes = b"\r\n\r\n") -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + sep for p in payloads)


def text_event(text: str, **extra: Any) -> dict[str, Any]:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if "finishReason" in extra:
        candidate["finishReason"] = extra.pop("finishReason")
    return {"candidates": [candidate], "modelVersion": "gemini-2.0-flash-001", **extra}


GOLDEN_STREAM = sse(
    text_event("Hel", usageMetadata={"promptTokenCount": 4, "totalTokenCount": 4}),
    text_event("lo é", usageMetadata={"promptTokenCount": 4, "totalTokenCount": 4}),
    text_event("", finishReason="STOP",
               usageMetadata={"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}),
)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gemini-2.0-flash-001", "provider": "google",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


GOLDEN_CHUNKS = [
    chunk({"role": "assistant", "content": "Hel"}),
    chunk({"content": "lo é"}),
    chunk({}, "stop"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gemini-2.0-flash-001",
     "provider": "google", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}},
]


def test_a_stream_becomes_chunks_event_by_event() -> None:
    parser = GOOGLE_CHAT.stream(STREAM)
    events = GOLDEN_STREAM.split(b"\r\n\r\n")
    assert parser.feed(events[0] + b"\r\n\r\n") == GOLDEN_CHUNKS[:1]
    assert parser.feed(events[1] + b"\r\n\r\n") == GOLDEN_CHUNKS[1:2]
    assert parser.feed(events[2] + b"\r\n\r\n") == GOLDEN_CHUNKS[2:3]
    assert parser.finish() == GOLDEN_CHUNKS[3:]  # the usage of the last event, once, at the end


@pytest.mark.parametrize("split", range(0, len(GOLDEN_STREAM) + 1, 7))
def test_a_stream_gives_the_same_chunks_at_any_split(split: int) -> None:
    parser = GOOGLE_CHAT.stream(STREAM)
    chunks = parser.feed(GOLDEN_STREAM[:split]) + parser.feed(GOLDEN_STREAM[split:]) + parser.finish()
    assert chunks == GOLDEN_CHUNKS


@pytest.mark.parametrize("separator", [b"\r\n", b"\n"])
def test_a_stream_read_byte_by_byte_gives_the_same_chunks(separator: bytes) -> None:
    data = GOLDEN_STREAM.replace(b"\r\n", separator)
    parser = GOOGLE_CHAT.stream(STREAM)
    chunks = [c for i in range(len(data)) for c in parser.feed(data[i:i + 1])]
    assert chunks + parser.finish() == GOLDEN_CHUNKS


def test_streamed_function_calls_are_whole_tool_call_deltas() -> None:
    data = sse({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "a", "args": {"x": 1}}}, {"functionCall": {"name": "b", "args": {}}}]},
        "finishReason": "STOP", "index": 0}], "modelVersion": "gemini-2.0-flash-001"})
    chunks = GOOGLE_CHAT.stream(STREAM).feed(data)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    ids = [d["tool_calls"][0]["id"] for d in deltas[:2]]
    assert all(CALL_ID.fullmatch(i) for i in ids)
    assert deltas == [
        {"role": "assistant", "tool_calls": [{"index": 0, "id": ids[0], "type": "function",
                                              "function": {"name": "a", "arguments": '{"x":1}'}}]},
        {"tool_calls": [{"index": 1, "id": ids[1], "type": "function", "function": {"name": "b", "arguments": "{}"}}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_streamed_block_is_a_content_filter() -> None:
    parser = GOOGLE_CHAT.stream(STREAM)
    chunks = parser.feed(sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                              "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3},
                              "modelVersion": "gemini-2.0-flash-001"}))
    assert chunks == [chunk({"role": "assistant", "content": ""}), chunk({}, "content_filter")]
    assert parser.finish()[0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_an_error_event_breaks_the_stream() -> None:
    parser = GOOGLE_CHAT.stream(STREAM)
    assert parser.feed(sse(text_event("Hi"))) == [chunk({"role": "assistant", "content": "Hi"})]
    with pytest.raises(UpstreamBroke) as broke:
        parser.feed(sse({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}))
    assert broke.value.error == {"message": "google error: The model is overloaded.", "type": "api_error",
                                 "param": None, "code": "UNAVAILABLE"}


def test_a_stream_cut_before_its_finish_reason_breaks() -> None:
    parser = GOOGLE_CHAT.stream(STREAM)
    assert parser.feed(sse(text_event("Hi"))) == [chunk({"role": "assistant", "content": "Hi"})]
    with pytest.raises(UpstreamBroke, match="google error: the stream ended before its finishReason"):
        parser.finish()


def test_an_error_event_reaches_the_client_as_an_error_and_nothing_more() -> None:
    transform = StreamTransform(GeminiChunks(STREAM), OpenAIStream(), "google", None)
    assert transform.feed(sse(text_event("Hi"))) == b'data: ' + json.dumps(
        chunk({"role": "assistant", "content": "Hi"}), separators=(",", ":")).encode() + b"\n\n"
    out = transform.feed(sse({"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}))
    assert json.loads(out.removeprefix(b"data: "))["error"]["message"] == "google error: Internal error"
    assert transform.finish() == b""  # no [DONE] after a failure


# --------------------------------------------------------------------------- embeddings


def test_one_input_is_embed_content_and_many_are_a_batch() -> None:
    facts = replace(FACTS, model="models/gemini-embedding-001")
    assert GOOGLE_EMBED.request({"input": "hi", "dimensions": 4, "encoding_format": "float"}, facts) == \
        NativeRequest("/v1beta/models/gemini-embedding-001:embedContent",
                      {"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 4})
    assert GOOGLE_EMBED.request({"input": ["a", "b"]}, facts) == NativeRequest(
        "/v1beta/models/gemini-embedding-001:batchEmbedContents", {"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}]})


def test_embedding_answers_become_an_embeddings_list() -> None:
    facts = replace(FACTS, model="gemini-embedding-001")
    expected = {"object": "list", "model": "gemini-embedding-001", "provider": "google", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}]}
    assert GOOGLE_EMBED.response({"embedding": {"values": [0.5, -0.25]}}, facts) == expected
    assert GOOGLE_EMBED.response({"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]}, facts) == {
        **expected, "data": [*expected["data"], {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}]}


def test_vertex_embeddings_are_a_predict_call() -> None:
    facts = replace(VFACTS, model="text-embedding-005")
    assert VERTEX_EMBED.request({"input": ["a", "b"], "dimensions": 2}, facts) == NativeRequest(
        "/v1/projects/my-proj/locations/us-central1/publishers/google/models/text-embedding-005:predict",
        {"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 2}})
    native = {"predictions": [
        {"embeddings": {"values": [0.1, 0.2], "statistics": {"token_count": 3, "truncated": False}}},
        {"embeddings": {"values": [0.3, 0.4], "statistics": {"token_count": 2.0, "truncated": False}}}],
        "metadata": {"billableCharacterCount": 9}}
    assert VERTEX_EMBED.response(native, facts) == {
        "object": "list", "model": "text-embedding-005", "provider": "vertex-ai",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
                 {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]}],
        "usage": {"prompt_tokens": 5, "total_tokens": 5}}


@pytest.mark.parametrize(("body", "message"), [
    ({"input": [[1, 2, 3]]}, "token arrays are not supported"),
    ({"input": []}, "non-empty list of strings"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format must be float or base64"),
])
def test_embedding_inputs_google_cannot_take_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        GOOGLE_EMBED.request(body, FACTS)


def test_base64_embeddings_are_encoded_by_the_front_as_openai_does() -> None:
    front = OpenAIFront("embed")
    body = front.request({"model": "m", "input": "x", "encoding_format": "base64"})
    answer = front.response(GOOGLE_EMBED.response({"embedding": {"values": [0.5, -2.0]}}, FACTS), FACTS)
    encoded = answer["data"][0]["embedding"]
    assert body["encoding_format"] == "base64"
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -2.0)


# --------------------------------------------------------------------------- against the fake


def test_a_tool_round_trip_against_the_fake(fake: FakeProvider) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}}]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}, user("Weather in Paris?")]
    for adapter, facts, vertex in ((GOOGLE_CHAT, FACTS, False), (VERTEX_CHAT, VFACTS, True)):
        first = adapter.response(send(fake, adapter.request(
            {"messages": messages, "tools": tools, "tool_choice": "required"}, facts), vertex).json(), facts)
        message = first["choices"][0]["message"]
        assert first["choices"][0]["finish_reason"] == "tool_calls"
        assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"fake"}'}
        result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"temp": 21}'}
        second = adapter.response(send(fake, adapter.request(
            {"messages": [*messages, message, result], "tools": tools}, facts), vertex).json(), facts)
        assert second["choices"][0]["message"] == {"role": "assistant",
                                                   "content": 'Fake gemini read get_weather: {"temp": 21}'}
        assert second["choices"][0]["finish_reason"] == "stop"


def test_the_fake_answers_several_candidates_cut_at_max_tokens(fake: FakeProvider) -> None:
    native = GOOGLE_CHAT.request({"messages": [user("hi")], "n": 2, "max_tokens": 2}, FACTS)
    answer = GOOGLE_CHAT.response(send(fake, native).json(), FACTS)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "Hello from", "length"), (1, "Hello from", "length")]
    assert answer["model"] == "gemini-2.0-flash"
    assert answer["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("size", [1, 5, 64])
def test_a_stream_from_the_fake_reads_the_same_at_any_read_size(fake: FakeProvider, size: int) -> None:
    native = GOOGLE_CHAT.request({"messages": [user("hi")], "stream": True}, STREAM)
    response = send(fake, native, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    parser = GOOGLE_CHAT.stream(STREAM)
    chunks = [c for piece in response.iter_content(size) for c in parser.feed(piece)] + parser.finish()
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == GEMINI_TEXT
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:-1]] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_stream_error_from_the_fake_breaks_the_stream(fake: FakeProvider) -> None:
    native = VERTEX_CHAT.request({"messages": [user("hi")], "stream": True}, replace(VFACTS, stream=True))
    response = send(fake, native, vertex=True, headers={"x-fake-stream-error": "1"})
    parser = VERTEX_CHAT.stream(replace(VFACTS, stream=True))
    with pytest.raises(UpstreamBroke, match="vertex-ai error: The model is overloaded"):
        parser.feed(response.content)


def test_embeddings_against_the_fake_both_paths(fake: FakeProvider) -> None:
    facts = replace(FACTS, model="gemini-embedding-001")
    one = GOOGLE_EMBED.response(send(fake, GOOGLE_EMBED.request({"input": "a", "dimensions": 3}, facts)).json(),
                                facts)
    assert one["data"] == [{"object": "embedding", "index": 0, "embedding": _vector("a", 3)}]
    many = GOOGLE_EMBED.response(send(fake, GOOGLE_EMBED.request({"input": ["a", "b"]}, facts)).json(), facts)
    assert [d["embedding"] for d in many["data"]] == [_vector("a", 8), _vector("b", 8)]
    vfacts = replace(VFACTS, model="text-embedding-005")
    vertex = VERTEX_EMBED.response(send(fake, VERTEX_EMBED.request({"input": ["a b", "c"]}, vfacts),
                                        vertex=True).json(), vfacts)
    assert [d["embedding"] for d in vertex["data"]] == [_vector("a b", 8), _vector("c", 8)]
    assert vertex["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


@pytest.mark.parametrize(("body", "message"), [
    ({"generationConfig": {"temperature": 1}}, "contents is not specified"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents[0].parts: contents.parts must not be empty"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": [{"role": "function", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "empty text parameter"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 5}},
     'Unknown name "maxTokens" at \'generation_config\': Cannot find field.'),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "responseMimeType": "application/json", "responseSchema": {"type": "object", "additionalProperties": False,
                                                                   "properties": {"a": {"type": "string"}}}}},
     'Unknown name "additionalProperties" at \'generation_config.response_schema\''),
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "object", "properties": {}}}]}]},
     "should be non-empty for OBJECT type"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]},
                   {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}},
                                               {"functionCall": {"name": "g", "args": {}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
     "number of function response parts is equal to the number of function call parts"),
    ({"contents": [{"parts": [{"text": "x"}]}], "topK": 3}, 'Unknown name "topK": Cannot find field.'),
])
def test_the_fake_refuses_what_google_refuses(fake: FakeProvider, body: dict[str, Any], message: str) -> None:
    for path, vertex in (("/v1beta/models/gemini-2.0-flash:generateContent", False),
                         ("/v1/projects/p/locations/us-central1/publishers/google/models/g:generateContent", True)):
        response = send(fake, NativeRequest(path, body), vertex)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
        assert message in error["message"]
        unified = unified_error("google", 400, response.content)
        assert unified == {"error": {"message": f"google error: {error['message']}", "type": "invalid_request_error",
                                     "param": None, "code": "INVALID_ARGUMENT"}, "provider": "google"}


def test_every_translated_request_is_one_the_fake_accepts(fake: FakeProvider) -> None:
    body = {"messages": [
        {"role": "system", "content": "s"}, user(""), {"role": "assistant", "content": ""}, user("hi"),
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": ["string", "null"], "format": "email"}},
            "additionalProperties": False}}},
        "temperature": 1, "top_p": 0.5, "max_tokens": 50, "stop": ["a", "b"], "seed": 1, "n": 1}
    for adapter, facts, vertex in ((GOOGLE_CHAT, FACTS, False), (VERTEX_CHAT, VFACTS, True)):
        response = send(fake, adapter.request(body, facts), vertex)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(("vertex", "headers", "status", "kind", "code"), [
    (False, {"x-goog-api-key": ""}, 403, "permission_error", "PERMISSION_DENIED"),
    (False, {"x-goog-api-key": "invalid-key"}, 400, "invalid_request_error", "INVALID_ARGUMENT"),
    (True, {"Authorization": ""}, 401, "authentication_error", "UNAUTHENTICATED"),
])
def test_auth_failures_come_back_in_the_unified_shape(fake: FakeProvider, vertex: bool, headers: dict[str, str],
                                                      status: int, kind: str, code: str) -> None:
    adapter, facts = (VERTEX_CHAT, VFACTS) if vertex else (GOOGLE_CHAT, FACTS)
    response = send(fake, adapter.request({"messages": [user("hi")]}, facts), vertex, headers=headers)
    assert response.status_code == status
    error = unified_error(facts.provider, status, response.content)["error"]
    assert (error["type"], error["code"]) == (kind, code)
    assert error["message"].startswith(f"{facts.provider} error: ")


def test_a_batch_naming_another_model_is_refused_by_the_fake(fake: FakeProvider) -> None:
    native = NativeRequest("/v1beta/models/a:batchEmbedContents",
                           {"requests": [{"model": "models/b", "content": {"parts": [{"text": "x"}]}}]})
    response = send(fake, native)
    assert response.status_code == 400
    assert "models/a" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- reasoning_effort


@pytest.mark.parametrize(("model", "effort", "thinking"), [
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-2.5-pro", "low", {"thinkingBudget": 1024}),
    ("models/gemini-2.5-pro", "medium", {"thinkingBudget": 8192}),
    ("gemini-2.5-pro", "high", {"thinkingBudget": 24576}),
    ("gemini-3-pro-preview", "high", {"thinkingLevel": "high"}),
    ("gemini-3-flash", "minimal", {"thinkingLevel": "minimal"}),
])
def test_reasoning_effort_becomes_gemini_thinking(model: str, effort: str, thinking: dict[str, Any]) -> None:
    body = {"model": model, "reasoning_effort": effort, "messages": [{"role": "user", "content": "hi"}]}
    native = GOOGLE_CHAT.request(body, replace(FACTS, model=model))
    assert native.body["generationConfig"] == {"thinkingConfig": thinking}


@pytest.mark.parametrize(("model", "effort", "said"), [("gemini-3-pro-preview", "none", "always think"),
                                                         ("gemini-2.5-pro", "extreme", "one of none, minimal"),
                                                         ("gemini-2.5-pro", ["high"], "one of none, minimal")])
def test_reasoning_effort_gemini_cannot_honour_is_refused(model: str, effort: Any, said: str) -> None:
    body = {"model": model, "reasoning_effort": effort, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadRequest, match=said):
        GOOGLE_CHAT.request(body, replace(FACTS, model=model))


def test_the_fake_takes_a_thinking_budget_and_refuses_it_with_a_level(fake: FakeProvider) -> None:
    url = f"{fake.url}/v1beta/models/gemini-2.5-pro:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}}}
    assert requests.post(url, json=body, headers={"x-goog-api-key": "k"}).status_code == 200
    body["generationConfig"]["thinkingConfig"]["thinkingLevel"] = "low"
    refused = requests.post(url, json=body, headers={"x-goog-api-key": "k"})
    assert refused.status_code == 400 and "thinking_level" in refused.json()["error"]["message"]
