"""UsageTap: golden answers of every supported shape, awkward chunk splits, gzip, bounds and garbage."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from app.usage import Usage, UsageTap

FIXTURES = Path(__file__).parent / "fixtures" / "usage"
CONTENT_TYPES = {".json": "application/json", ".sse": "text/event-stream; charset=utf-8",
                 ".ndjson": "application/x-ndjson"}

# fixture file, request model, expected usage
GOLDEN: list[tuple[str, str | None, Usage]] = [
    ("openai_chat.json", "gpt-4o-mini",
     Usage(model="gpt-4o-mini-2024-07-18", input_tokens=2006, output_tokens=300, cache_read_tokens=1920)),
    ("openai_chat_stream.sse", "gpt-4o-mini",
     Usage(model="gpt-4o-mini-2024-07-18", input_tokens=1117, output_tokens=46, cache_read_tokens=1024)),
    # Anthropic reports cache reads and writes beside input_tokens: they are added into the prompt count.
    ("anthropic_message.json", "claude-sonnet-4-5",
     Usage(model="claude-sonnet-4-5-20250929", input_tokens=21 + 188086, output_tokens=393, cache_read_tokens=0,
           cache_write_tokens=188086)),
    ("anthropic_stream.sse", "claude-sonnet-4-5",
     Usage(model="claude-sonnet-4-5-20250929", input_tokens=472 + 2048, output_tokens=89, cache_read_tokens=2048,
           cache_write_tokens=0)),
    # Cohere answers name no model: the request's stands; billed units win over raw token counts.
    ("cohere_chat_v2.json", "command-a-03-2025",
     Usage(model="command-a-03-2025", input_tokens=17, output_tokens=32)),
    ("cohere_chat_v2_stream.sse", "command-a-03-2025",
     Usage(model="command-a-03-2025", input_tokens=3, output_tokens=9)),
    ("cohere_chat_v1.json", "command-r-08-2024", Usage(model="command-r-08-2024", input_tokens=11, output_tokens=8)),
    ("cohere_embed_v2.json", "embed-v4.0", Usage(model="embed-v4.0", input_tokens=1)),
    ("cohere_rerank.json", "rerank-v3.5", Usage(model="rerank-v3.5", search_units=1)),
    # Gemini: thoughts are billed as output; promptTokenCount already includes the cached part.
    ("gemini_generate.json", "gemini-2.5-flash",
     Usage(model="gemini-2.5-flash", input_tokens=1290, output_tokens=40 + 46, cache_read_tokens=1024)),
    ("gemini_stream.sse", None, Usage(model="gemini-2.5-flash", input_tokens=9, output_tokens=14 + 28)),
    ("gemini_stream_array.json", None, Usage(model="gemini-2.0-flash", input_tokens=7, output_tokens=5)),
    ("bedrock_converse.json", "anthropic.claude-sonnet-4-20250514-v1:0",
     Usage(model="anthropic.claude-sonnet-4-20250514-v1:0", input_tokens=30 + 2048, output_tokens=628,
           cache_read_tokens=2048, cache_write_tokens=0)),
    ("openai_embeddings.json", None, Usage(model="text-embedding-3-small", input_tokens=8)),
    ("openai_images.json", "dall-e-3", Usage(model="dall-e-3", images=2)),
    ("openai_responses.json", "gpt-4.1",
     Usage(model="gpt-4.1-2025-04-14", input_tokens=12033, output_tokens=44, cache_read_tokens=11904)),
    ("openai_responses_stream.sse", "gpt-4.1",
     Usage(model="gpt-4.1-2025-04-14", input_tokens=37, output_tokens=11, cache_read_tokens=0)),
    ("openai_transcription_verbose.json", "whisper-1", Usage(model="whisper-1", audio_seconds=8.470000267028809)),
    ("ollama_chat.ndjson", None, Usage(model="llama3.2", input_tokens=26, output_tokens=282)),
    ("groq_stream.sse", None, Usage(model="llama-3.3-70b-versatile", input_tokens=24, output_tokens=377)),
    ("deepseek_chat.json", None,
     Usage(model="deepseek-chat", input_tokens=1600, output_tokens=200, cache_read_tokens=1536)),
]
GOLDEN_IDS = [name for name, _, _ in GOLDEN]


def load(name: str) -> tuple[bytes, str]:
    """Return a fixture's bytes and the content type its answer would carry."""
    path = FIXTURES / name
    return path.read_bytes(), CONTENT_TYPES[path.suffix]


def tap_in_pieces(body: bytes, content_type: str | None, sizes: list[int] | int, request_model: str | None = None,
                  content_encoding: str | None = None, **limits: int) -> UsageTap:
    """Feed body to a new tap cut into pieces of the given sizes (cycled), and return the tap."""
    tap = UsageTap(content_type, content_encoding, request_model, **limits)
    cycle = [sizes] if isinstance(sizes, int) else sizes
    pos, index = 0, 0
    while pos < len(body):
        size = cycle[index % len(cycle)]
        tap.feed(body[pos:pos + size])
        pos += size
        index += 1
    return tap


@pytest.mark.parametrize(("name", "request_model", "expected"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_answer_whole(name: str, request_model: str | None, expected: Usage) -> None:
    body, content_type = load(name)
    tap = tap_in_pieces(body, content_type, len(body), request_model)
    assert tap.result() == expected


@pytest.mark.parametrize(("name", "request_model", "expected"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_answer_one_byte_at_a_time(name: str, request_model: str | None, expected: Usage) -> None:
    body, content_type = load(name)
    assert tap_in_pieces(body, content_type, 1, request_model).result() == expected


@pytest.mark.parametrize(("name", "request_model", "expected"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_answer_split_at_every_position(name: str, request_model: str | None, expected: Usage) -> None:
    body, content_type = load(name)
    for cut in range(1, len(body)):
        tap = UsageTap(content_type, None, request_model)
        tap.feed(body[:cut])
        tap.feed(body[cut:])
        assert tap.result() == expected, f"split at byte {cut}"


@pytest.mark.parametrize(("name", "request_model", "expected"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_answer_random_chunks(name: str, request_model: str | None, expected: Usage) -> None:
    body, content_type = load(name)
    rng = random.Random(name)
    for _ in range(20):
        sizes = [rng.randint(1, 97) for _ in range(8)]
        assert tap_in_pieces(body, content_type, sizes, request_model).result() == expected, sizes


@pytest.mark.parametrize(("name", "request_model", "expected"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_answer_gzip(name: str, request_model: str | None, expected: Usage) -> None:
    body, content_type = load(name)
    compressed = gzip.compress(body)
    assert tap_in_pieces(compressed, content_type, 7, request_model, "gzip").result() == expected


def test_split_inside_a_multibyte_character() -> None:
    body, content_type = load("openai_chat_stream.sse")
    emoji = "😀".encode()
    inside = body.index(emoji) + 2
    tap = UsageTap(content_type, None)
    tap.feed(body[:inside])
    tap.feed(body[inside:])
    assert tap.result().input_tokens == 1117


def test_split_inside_crlf_and_between_event_lines() -> None:
    body, content_type = load("gemini_stream.sse")
    assert b"\r\n\r\n" in body
    for cut in [i + 1 for i in range(len(body)) if body[i:i + 1] == b"\r"]:
        tap = UsageTap(content_type, None)
        tap.feed(body[:cut])
        tap.feed(body[cut:])
        assert tap.result().output_tokens == 42


def test_stream_cut_before_final_blank_line_still_counts() -> None:
    body, content_type = load("openai_chat_stream.sse")
    cut = body.index(b"\n\ndata: [DONE]")
    assert tap_in_pieces(body[:cut], content_type, 13).result().output_tokens == 46


def test_stream_cut_before_usage_reports_model_only() -> None:
    body, content_type = load("anthropic_stream.sse")
    cut = body.index(b"event: message_start") + 10
    usage = tap_in_pieces(body[:cut], content_type, 5, "claude-sonnet-4-5").result()
    assert usage.is_empty()
    assert usage.model == "claude-sonnet-4-5"


def test_anthropic_stream_with_cumulative_input_in_message_delta() -> None:
    # Newer API versions repeat the (cumulative) input and cache counts in message_delta.
    events = [
        {"type": "message_start", "message": {"model": "claude-haiku-4-5-20251001", "usage": {
            "input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
            "input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 7}},
    ]
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    usage = tap_in_pieces(body, "text/event-stream", 3).result()
    assert usage == Usage(model="claude-haiku-4-5-20251001", input_tokens=115, output_tokens=7,
                          cache_read_tokens=100, cache_write_tokens=5)


def test_translated_anthropic_usage_in_openai_shape_is_not_double_counted() -> None:
    # A gateway translating Anthropic to OpenAI may keep the cache fields beside prompt_tokens...
    beside = {"model": "claude-sonnet-4-5", "usage": {"prompt_tokens": 10, "completion_tokens": 5,
              "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "total_tokens": 135}}
    assert UsageTapResult(beside).input_tokens == 130
    # ...or fold them into it, which the total (or an OpenAI-style detail) gives away.
    folded = {"model": "claude-sonnet-4-5", "usage": {"prompt_tokens": 130, "completion_tokens": 5,
              "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "total_tokens": 135}}
    assert UsageTapResult(folded).input_tokens == 130
    detailed = {"usage": {"prompt_tokens": 130, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 100},
                          "cache_read_input_tokens": 100}}
    assert UsageTapResult(detailed) == Usage(input_tokens=130, output_tokens=5, cache_read_tokens=100)


def UsageTapResult(answer: object) -> Usage:  # noqa: N802 - reads like the value it returns
    """Return the usage a tap reads from answer sent as one JSON body."""
    tap = UsageTap("application/json", None)
    tap.feed(json.dumps(answer).encode())
    return tap.result()


def test_model_in_nested_user_metadata_does_not_replace_the_answers_model() -> None:
    answer = {"type": "response.completed", "response": {
        "model": "gpt-4.1-2025-04-14", "metadata": {"model": "gpt-4o-mini"},
        "usage": {"input_tokens": 5, "output_tokens": 1}}}
    assert UsageTapResult(answer).model == "gpt-4.1-2025-04-14"


def test_images_b64_with_token_usage() -> None:
    answer = {"created": 1713833628, "background": "transparent", "output_format": "png",
              "data": [{"b64_json": "iVBORw0KGgo="}],
              "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
                        "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}}
    assert UsageTapResult(answer) == Usage(input_tokens=50, output_tokens=50, images=1)


def test_embeddings_list_is_not_taken_for_images() -> None:
    body, _ = load("openai_embeddings.json")
    assert UsageTapResult(json.loads(body)).images is None


def test_embeddings_reporting_only_a_total_bill_it_as_input() -> None:
    answer = {"object": "list", "data": [{"object": "embedding", "embedding": [0.1], "index": 0}],
              "model": "voyage-3.5", "usage": {"total_tokens": 10}}
    assert UsageTapResult(answer) == Usage(model="voyage-3.5", input_tokens=10)


def test_transcription_usage_of_type_duration() -> None:
    answer = {"text": "Imagine the wildest idea.", "usage": {"type": "duration", "seconds": 3}}
    assert UsageTapResult(answer).audio_seconds == 3.0


def test_transcription_with_token_usage() -> None:
    answer = {"text": "Hi", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 45, "total_tokens": 59,
                                      "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}}
    assert UsageTapResult(answer) == Usage(input_tokens=14, output_tokens=45)


def test_cohere_v1_stream_end_event() -> None:
    # Cohere v1 chat streams newline-delimited JSON as application/stream+json.
    events = [{"is_finished": False, "event_type": "text-generation", "text": "Hi"},
              {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE",
               "response": {"text": "Hi", "meta": {"billed_units": {"input_tokens": 4, "output_tokens": 1}}}}]
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    expected = Usage(model="command-r", input_tokens=4, output_tokens=1)
    assert tap_in_pieces(body, "application/stream+json", 5, "command-r").result() == expected
    body_sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    assert tap_in_pieces(body_sse, "text/event-stream", 5, "command-r").result() == expected


def test_format_is_sniffed_when_content_type_is_missing_or_mislabelled() -> None:
    body, _ = load("openai_chat_stream.sse")
    for content_type in (None, "text/plain", "application/json"):
        assert tap_in_pieces(body, content_type, 2).result().output_tokens == 46, content_type
    json_body, _ = load("anthropic_message.json")
    assert tap_in_pieces(b"\n  " + json_body, None, 1).result().output_tokens == 393


def test_media_answers_are_not_read() -> None:
    tap = UsageTap("audio/mpeg", None, "tts-1")
    assert not tap.active
    tap.feed(b'{"usage": {"prompt_tokens": 5}}')
    assert tap.result() == Usage(model="tts-1")


def test_feed_does_not_change_or_keep_the_callers_buffers() -> None:
    body, content_type = load("openai_chat_stream.sse")
    chunk = bytearray(body)
    before = bytes(chunk)
    tap = UsageTap(content_type, None)
    tap.feed(chunk)
    tap.feed(memoryview(b""))
    chunk[:] = b"x" * len(chunk)  # the relay may reuse its buffer
    assert before == body
    assert tap.result().input_tokens == 1117


def test_result_is_stable_and_feed_after_result_is_harmless() -> None:
    body, content_type = load("openai_chat.json")
    tap = tap_in_pieces(body, content_type, 100)
    first = tap.result()
    assert tap.result() == first
    tap.feed(b"more bytes")
    assert tap.result() == first


# --- compression ---------------------------------------------------------------------------------

def test_deflate_zlib_and_raw() -> None:
    body, content_type = load("openai_chat.json")
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_body = raw.compress(body) + raw.flush()
    for encoded in (zlib.compress(body), raw_body):
        assert tap_in_pieces(encoded, content_type, 5, content_encoding="deflate").result().output_tokens == 300


def test_gzip_sse_stream_and_concatenated_members() -> None:
    body, content_type = load("anthropic_stream.sse")
    half = len(body) // 2
    two_members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    assert tap_in_pieces(two_members, content_type, 3, content_encoding="gzip").result().output_tokens == 89


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br", "compress"])
def test_unsupported_encodings_are_not_read(encoding: str) -> None:
    tap = UsageTap("application/json", encoding, "gpt-4o")
    tap.feed(b"\x1b\x2c\x00\x00garbage")
    assert not tap.active
    assert tap.result() == Usage(model="gpt-4o")


def test_identity_encoding_is_plain() -> None:
    body, content_type = load("openai_chat.json")
    assert tap_in_pieces(body, content_type, 64, content_encoding="identity").result().input_tokens == 2006


def test_corrupt_gzip_gives_empty_usage() -> None:
    tap = UsageTap("application/json", "gzip", "gpt-4o")
    tap.feed(b"\x1f\x8b\x08\x00not really gzip at all")
    assert tap.result() == Usage(model="gpt-4o")


def test_compression_bomb_stops_inflating() -> None:
    bomb = gzip.compress(b"[" + b" " * (8 << 20), compresslevel=9)
    assert len(bomb) < 64 * 1024
    tap = tap_in_pieces(bomb, "application/json", 4096, content_encoding="gzip", max_inflated_bytes=1 << 20)
    assert not tap.active
    assert tap.result().is_empty()


# --- bounds ----------------------------------------------------------------------------------------

def big_embeddings_answer(vectors: int) -> bytes:
    """Return an embeddings answer of many 1536-float vectors (several MB) with usage at the end."""
    vector = ",".join(["-0.0123456789"] * 1536)
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":[{vector}]}}' for i in range(vectors))
    return (f'{{"object":"list","data":[{data}],"model":"text-embedding-3-large",'
            f'"usage":{{"prompt_tokens":{vectors * 7},"total_tokens":{vectors * 7}}}}}').encode()


def test_oversized_body_keeps_bounded_memory_and_reads_usage_from_its_tail() -> None:
    body = big_embeddings_answer(150)
    assert len(body) > 3_000_000
    tap = UsageTap("application/json", None, max_json_bytes=256 * 1024)
    held = 0
    for pos in range(0, len(body), 64 * 1024):
        tap.feed(body[pos:pos + 64 * 1024])
        held = max(held, tap.held_bytes)
    assert held <= 256 * 1024 + 64 * 1024
    assert tap.result() == Usage(model="text-embedding-3-large", input_tokens=1050)


def test_oversized_body_without_usage_in_its_tail_gives_no_usage() -> None:
    padding = "x" * (3 << 20)
    body = json.dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 5}, "model": "m", "blob": padding}).encode()
    tap = UsageTap("application/json", None)
    for pos in range(0, len(body), 65536):
        tap.feed(body[pos:pos + 65536])
        assert tap.held_bytes <= (1 << 20) + 65536
    usage = tap.result()
    assert usage.is_empty()
    assert usage.model == "m"


def test_oversized_body_peak_memory_is_bounded() -> None:
    chunk = b'{"data":"' + b"A" * (64 * 1024 - 9)
    filler = b"A" * (64 * 1024)
    tail = b'","usage":{"prompt_tokens":3,"completion_tokens":4}}'
    tracemalloc.start()
    try:
        tap = UsageTap("application/json", None)
        tap.feed(chunk)
        for _ in range(20 * 16):  # 20 MiB
            tap.feed(filler)
        tap.feed(tail)
        usage = tap.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert usage == Usage(input_tokens=3, output_tokens=4)
    assert peak < 3 << 20, peak


def test_oversized_images_answer_counts_base64_images() -> None:
    image = "A" * (1_500_000)
    answer = {"created": 1, "data": [{"b64_json": image}, {"b64_json": image}, {"b64_json": image}],
              "usage": {"input_tokens": 40, "output_tokens": 4160, "total_tokens": 4200}}
    body = json.dumps(answer).encode()
    tap = tap_in_pieces(body, "application/json", 4093, "gpt-image-1")
    assert tap.result() == Usage(model="gpt-image-1", input_tokens=40, output_tokens=4160, images=3)


def test_sse_line_longer_than_the_limit_is_dropped_and_reading_goes_on() -> None:
    content = "z" * 300_000
    event = {"choices": [{"delta": {"content": content}}], "usage": {"completion_tokens": 999}}
    huge = b"data: " + json.dumps(event).encode() + b"\n\n"
    tail = b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":3}}\n\n'
    for body, expected in ((huge, Usage()), (huge + tail, Usage(model="m", input_tokens=3))):
        tap = UsageTap("text/event-stream", None, max_event_bytes=64 * 1024)
        for pos in range(0, len(body), 1000):
            tap.feed(body[pos:pos + 1000])
            assert tap.held_bytes <= 64 * 1024 + 1000
        assert tap.result() == expected


def test_separator_straddling_chunks_after_an_oversized_event_is_seen() -> None:
    oversized = b"data: " + b"q" * 5000 + b"\n"
    tail = b'data: {"usage": {"prompt_tokens": 2}}\n\n'
    for first_cut in (len(oversized), len(oversized) - 1, 5000):
        tap = UsageTap("text/event-stream", None, max_event_bytes=1000)
        tap.feed(oversized[:first_cut])
        tap.feed(oversized[first_cut:])
        tap.feed(b"\n")  # the second newline of the separator arrives alone
        tap.feed(tail)
        assert tap.result() == Usage(input_tokens=2), first_cut


def test_long_event_split_over_many_data_lines_is_dropped_whole() -> None:
    line = b"data: " + b"y" * 1000 + b"\n"
    body = b'data: {"usage": {"prompt_tokens": 1}}\n' + line * 100 + b"\n"
    tap = UsageTap("text/event-stream", None, max_event_bytes=10_000)
    tap.feed(body)
    assert tap.held_bytes == 0
    assert tap.result().is_empty()


def test_multiline_sse_data_is_joined() -> None:
    body = b'event: x\ndata: {"usage":\ndata: {"prompt_tokens": 4, "completion_tokens": 1}}\n\n'
    assert tap_in_pieces(body, "text/event-stream", 1).result() == Usage(input_tokens=4, output_tokens=1)


# --- garbage ---------------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\x00\xff\xfe\x80" * 100,
    b"{" * 10_000,
    b"[" * 10_000 + b"]" * 10_000,
    b'{"usage": "lots"}',
    b'{"usage": {"prompt_tokens": "12", "completion_tokens": -3}}',
    b'{"usage": {"prompt_tokens": true, "completion_tokens": 1e400}}',
    b'{"usageMetadata": [1, 2]}',
    b'{"meta": {"billed_units": {"search_units": "one"}}}',
    b'{"data": [1, 2, 3]}',
    b"data: {not json}\n\ndata: [DONE]\n\n",
    b"data: \xff\xfe\n\n",
    b"<html><body>502 Bad Gateway</body></html>",
    b'"just a string"',
    b"null",
]


@pytest.mark.parametrize("content_type", [None, "application/json", "text/event-stream", "application/x-ndjson",
                                          "application/vnd.amazon.eventstream", "text/plain"])
@pytest.mark.parametrize("body", GARBAGE)
def test_garbage_gives_empty_usage_and_no_exception(content_type: str | None, body: bytes) -> None:
    for size in (1, 7, max(len(body), 1)):
        tap = tap_in_pieces(body, content_type, size, "req-model")
        usage = tap.result()
        assert usage.is_empty()
        assert usage.model == "req-model"


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
        for content_type in ("application/json", "text/event-stream", "application/vnd.amazon.eventstream", None):
            for encoding in (None, "gzip"):
                tap = tap_in_pieces(body, content_type, rng.randint(1, 50), content_encoding=encoding)
                assert isinstance(tap.result(), Usage)


def test_wrong_argument_types_never_raise() -> None:
    tap = UsageTap("application/json", None)
    tap.feed("not bytes")  # type: ignore[arg-type]
    tap.feed(None)  # type: ignore[arg-type]
    assert tap.result() == Usage()


def test_usage_total_and_emptiness() -> None:
    assert Usage().total_tokens is None
    assert Usage(input_tokens=3).total_tokens == 3
    assert Usage(input_tokens=3, output_tokens=4).total_tokens == 7
    assert Usage(model="m").is_empty()
    assert not Usage(output_tokens=0).is_empty()
    assert not Usage(search_units=1).is_empty()
