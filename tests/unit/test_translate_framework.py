"""The translation framework: SSE reading, error mapping, stream transforms and the answer they rewrite."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.call.answer import Answer
from app.errors import BadRequest
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.call import StreamTransform, Translator, with_body
from app.translate.errors import unified_error
from app.translate.fronts import OpenAIFront, OpenAIStream
from app.translate.openai import CHAT as OPENAI_CHAT
from app.translate.sse import SSEReader

FACTS = CallFacts(provider="fakeprov", model=None, stream=False, id="chatcmpl-1", created=1700000000)


def read_all(reader: SSEReader, data: bytes, split: int) -> list[tuple[str, str]]:
    events = reader.feed(data[:split]) + reader.feed(data[split:])
    return events + reader.finish()


STREAM = (b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n: ping\n\n"
          b"data: line one\ndata: line two\n\nevent: end\ndata: {}")


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_sse_reader_gives_the_same_events_at_every_split(split: int) -> None:
    assert read_all(SSEReader(), STREAM, split) == [
        ("message_start", '{"a": 1}'), ("", "line one\nline two"), ("end", "{}")]


def test_sse_reader_refuses_an_endless_event() -> None:
    reader = SSEReader()
    with pytest.raises(ValueError, match="larger than 8 MiB"):
        for _ in range(9):
            reader.feed(b"x" * (1 << 20))


@pytest.mark.parametrize(("status", "raw", "aws", "expected"), [
    (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}', None,
     {"message": "p error: max_tokens: Field required", "type": "invalid_request_error", "param": None, "code": None}),
    (429, b'{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}', None,
     {"message": "p error: Quota exceeded", "type": "rate_limit_error", "param": None, "code": "RESOURCE_EXHAUSTED"}),
    (400, b'{"message":"Malformed input request"}', "ValidationException:http://internal.amazon.com/coral/",
     {"message": "p error: Malformed input request", "type": "invalid_request_error", "param": None,
      "code": "ValidationException"}),
    (422, b'{"message":"invalid request: model is required"}', None,
     {"message": "p error: invalid request: model is required", "type": "invalid_request_error", "param": None,
      "code": None}),
    (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', None,
     {"message": "p error: Overloaded", "type": "api_error", "param": None, "code": "overloaded_error"}),
    (502, b"<html>bad gateway</html>", None,
     {"message": "p error: <html>bad gateway</html>", "type": "api_error", "param": None, "code": None}),
    (500, b"", None, {"message": "p error: no error message", "type": "api_error", "param": None, "code": None}),
])
def test_provider_errors_take_the_unified_shape(status: int, raw: bytes, aws: str | None,
                                                expected: dict[str, Any]) -> None:
    assert unified_error("p", status, raw, aws) == {"error": expected, "provider": "p"}


def test_a_key_quoted_in_a_provider_error_is_masked() -> None:
    raw = (b'{"error":{"message":"Incorrect API key provided: sk-proj-abcdef1234567890. '
           b'See ?key=AIzaSyD123456789abcdefghijklmnopqrstu '
           b'and Bearer eyJhbGciOiJIUzI1NiJ9.payload; key AIzaSyA0987654321zyxwvutsrqponmlkjih invalid"}}')
    message = unified_error("p", 401, raw)["error"]["message"]
    for secret in ("abcdef1234567890", "D123456789abcdef", "eyJhbG", "A0987654321zyx"):
        assert secret not in message
    assert message.startswith("p error: Incorrect API key provided: sk-proj-[REDACTED]")


class Parser:
    """A ChunkParser that turns each `n` byte into a chunk, `!` into an error, `?` into a crash."""

    def __init__(self) -> None:
        self.finished = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if b"!" in data:
            raise UpstreamBroke({"message": "fakeprov error: overloaded", "type": "api_error", "param": None,
                                 "code": None})
        if b"?" in data:
            raise KeyError("content")
        return [{"n": 1} for byte in data if byte == ord("n")]

    def finish(self) -> list[dict[str, Any]]:
        self.finished = True
        return [{"last": True}]


def test_stream_transform_writes_chunks_then_done() -> None:
    transform = StreamTransform(Parser(), OpenAIStream(), "fakeprov", None)
    assert transform.feed(b"nxn") == b'data: {"n":1}\n\ndata: {"n":1}\n\n'
    assert transform.feed(b"x") == b""
    assert transform.finish() == b'data: {"last":true}\n\ndata: [DONE]\n\n'


def test_stream_transform_turns_an_upstream_error_into_an_error_event_and_stops() -> None:
    transform = StreamTransform(Parser(), OpenAIStream(), "fakeprov", None)
    out = transform.feed(b"!")
    assert json.loads(out.removeprefix(b"data: "))["error"]["message"] == "fakeprov error: overloaded"
    assert transform.broken
    assert transform.feed(b"n") == b""
    assert transform.finish() == b""  # no [DONE]: the stream did not end well


def test_stream_transform_turns_a_translation_failure_into_an_error_event(caplog: pytest.LogCaptureFixture) -> None:
    transform = StreamTransform(Parser(), OpenAIStream(), "fakeprov", None)
    out = transform.feed(b"?")
    assert json.loads(out.removeprefix(b"data: "))["error"] == {
        "message": "fakeprov error: the stream could not be translated", "type": "api_error", "param": None,
        "code": None}
    assert "could not translate the fakeprov stream" in caplog.text


def test_stream_transform_inflates_a_gzip_stream_across_reads() -> None:
    import gzip
    packed = gzip.compress(b"nnn")
    transform = StreamTransform(Parser(), OpenAIStream(), "fakeprov", "gzip")
    out = b"".join(transform.feed(packed[i:i + 3]) for i in range(0, len(packed), 3))
    assert out.count(b'{"n":1}') == 3


class Raw:
    """What Answer.next_chunk needs of urllib3's response: read1, close, release_conn."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    def read1(self, size: int, decode_content: bool = False) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.raw = Raw(pieces)
        self.url = "http://upstream.test/x"


def transformed(pieces: list[bytes]) -> tuple[Answer, Response]:
    response = Response(pieces)
    answer = Answer(200, "OK", [], b"", response,  # type: ignore[arg-type]
                    StreamTransform(Parser(), OpenAIStream(), "fakeprov", None))
    return answer, response


def test_answer_reads_a_transformed_stream_skipping_reads_that_complete_nothing() -> None:
    answer, _ = transformed([b"x", b"x", b"n", b"x"])
    assert answer.next_chunk() == b'data: {"n":1}\n\n'
    assert answer.next_chunk() == b'data: {"last":true}\n\ndata: [DONE]\n\n'
    assert answer.next_chunk() == b""


def test_answer_stops_reading_after_an_error_event_and_drops_the_connection() -> None:
    answer, response = transformed([b"n", b"!", b"n", b"n"])
    assert answer.next_chunk() == b'data: {"n":1}\n\n'
    assert b'"error"' in answer.next_chunk()
    assert answer.next_chunk() == b""
    assert response.raw.closed
    assert response.raw.pieces == [b"n", b"n"]  # the rest was never read


def test_translator_refuses_a_body_that_is_not_a_json_object() -> None:
    translator = Translator(OPENAI_CHAT, OpenAIFront("chatComplete"), FACTS, "/v1/chat/completions")
    with pytest.raises(BadRequest, match="^/v1/chat/completions needs a JSON object body"):
        translator.request([1, 2])


def test_translator_fills_the_facts_from_the_body() -> None:
    facts = with_body(FACTS, {"model": "@prod/gpt-x", "stream": True, "stream_options": {"include_usage": True}})
    assert (facts.model, facts.stream, facts.include_usage) == ("gpt-x", True, True)


def test_translator_maps_an_upstream_error_answer() -> None:
    translator = Translator(OPENAI_CHAT, OpenAIFront("chatComplete"), FACTS)
    upstream = Answer.whole(429, b'{"error":{"message":"slow down","type":"rate_limit_error"}}',
                            [("Content-Type", "application/json"), ("retry-after", "2")])
    answer = translator.answer(upstream)
    assert answer.status == 429
    assert answer.header("retry-after") == "2"  # retries still see it
    assert json.loads(answer.first_chunk) == {"error": {"message": "fakeprov error: slow down",
                                                        "type": "rate_limit_error", "param": None, "code": None},
                                              "provider": "fakeprov"}


@pytest.mark.parametrize(("region", "base"), [("us-central1", "https://us-central1-aiplatform.googleapis.com"),
                                               ("global", "https://aiplatform.googleapis.com")])
def test_vertex_base_url_follows_the_region(region: str, base: str) -> None:
    from app.providers.registry import get_provider
    assert get_provider("vertex-ai").base_for({"vertex_region": region}) == base
