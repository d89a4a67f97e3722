"""Vertex AI's unified chat picks the publisher by model: Claude goes to rawPredict, Gemini to generateContent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.errors import BadRequest
from app.translate.base import CallFacts, NativeRequest
from app.translate.vertex import CHAT, is_claude

FACTS = CallFacts(provider="vertex-ai", model="claude-sonnet-4-5@20250929", stream=False, id="chatcmpl-1",
                  created=1, options={"vertex_project_id": "my-proj", "vertex_region": "us-east5"})
BODY = {"model": "claude-sonnet-4-5@20250929", "max_tokens": 200, "temperature": 0.2,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}


def test_claude_goes_to_rawpredict_without_a_model_and_with_the_vertex_version() -> None:
    assert CHAT.request(BODY, FACTS) == NativeRequest(
        "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        {"max_tokens": 200, "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}],
         "temperature": 0.2, "anthropic_version": "vertex-2023-10-16"})


def test_a_streamed_claude_call_goes_to_streamrawpredict() -> None:
    native = CHAT.request({**BODY, "stream": True}, replace(FACTS, stream=True))
    assert native.path.endswith("/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict")
    assert native.body["stream"] is True


def test_gemini_models_keep_generatecontent() -> None:
    native = CHAT.request({**BODY, "model": "gemini-2.5-pro"}, replace(FACTS, model="gemini-2.5-pro"))
    assert native.path == ("/v1/projects/my-proj/locations/us-east5/publishers/google/models/"
                           "gemini-2.5-pro:generateContent")
    assert "contents" in native.body


@pytest.mark.parametrize(("model", "claude"), [("claude-3-5-haiku@20241022", True),
                                                ("publishers/anthropic/models/claude-opus-4", True),
                                                ("gemini-2.0-flash", False), (None, False)])
def test_the_publisher_is_read_from_the_model_name(model: str | None, claude: bool) -> None:
    assert is_claude(model) is claude


def test_claude_needs_the_vertex_project() -> None:
    with pytest.raises(BadRequest, match="x-portkey-vertex-project-id"):
        CHAT.request(BODY, replace(FACTS, options={"vertex_region": "us-east5"}))


def test_claude_answers_translate_as_anthropic_ones() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
              "content": [{"type": "text", "text": "Hi."}], "stop_reason": "end_turn", "stop_sequence": None,
              "usage": {"input_tokens": 9, "output_tokens": 2}}
    completion = CHAT.response(answer, FACTS)
    assert completion["choices"][0]["message"]["content"] == "Hi."
    assert completion["usage"]["total_tokens"] == 11
