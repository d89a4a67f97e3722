"""Bedrock event streams (application/vnd.amazon.eventstream): framing, CRCs, splits, usage events."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from app.usage import Usage, UsageTap
from app.usage.eventstream import EventStreamReader, parse_headers

EVENTSTREAM = "application/vnd.amazon.eventstream"

# Published encodings of the payload {"foo": "bar"}, without and with a content-type header: they pin
# the test encoder below (and so the reader) to the real wire format, CRCs included.
KNOWN_FRAME_NO_HEADERS = bytes([0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138]) + b'{"foo": "bar"}' + bytes(
    [174, 114, 88, 228])
KNOWN_FRAME_CONTENT_TYPE = (bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12]) + b"content-type" + bytes([7, 0, 16])
                            + b"application/json" + b'{"foo": "bar"}' + bytes([111, 162, 191, 59]))


def encode_header(name: str, value: str | int | bool | bytes) -> bytes:
    """Encode one header: string (7), bytes (6), int32 (4) or bool (0/1)."""
    raw_name = name.encode()
    out = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return out + bytes([0 if value else 1])
    if isinstance(value, int):
        return out + bytes([4]) + struct.pack(">i", value)
    if isinstance(value, bytes):
        return out + bytes([6]) + struct.pack(">H", len(value)) + value
    raw_value = value.encode()
    return out + bytes([7]) + struct.pack(">H", len(raw_value)) + raw_value


def frame(payload: bytes, headers: list[tuple[str, str | int | bool | bytes]] | None = None) -> bytes:
    """Return one eventstream message: prelude, prelude CRC, headers, payload, message CRC."""
    raw_headers = b"".join(encode_header(name, value) for name, value in headers or [])
    prelude = struct.pack(">II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, body: dict[str, object]) -> bytes:
    """Return a Bedrock event frame carrying a JSON payload."""
    return frame(json.dumps(body).encode(), [(":event-type", event_type), (":content-type", "application/json"),
                                            (":message-type", "event")])


def converse_stream(usage: dict[str, int]) -> bytes:
    """Return a realistic ConverseStream answer ending with its metadata event."""
    return b"".join([
        event("messageStart", {"p": "abcd", "role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bonjour, "}, "p": "abcdefgh"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "ça va? 😀"}, "p": "ab"}),
        event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefghijk"}),
        event("messageStop", {"p": "abcdefghijklmnop", "stopReason": "end_turn"}),
        event("metadata", {"metrics": {"latencyMs": 2613}, "p": "abcdefghijklmnopqrstuvwxyzABCDEF", "usage": usage}),
    ])


STREAM = converse_stream({"inputTokens": 25, "outputTokens": 291, "totalTokens": 1340, "cacheReadInputTokens": 1024,
                          "cacheWriteInputTokens": 0})
MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
EXPECTED = Usage(model=MODEL, input_tokens=25 + 1024, output_tokens=291, cache_read_tokens=1024, cache_write_tokens=0)


def feed_in_pieces(body: bytes, size: int) -> Usage:
    """Feed body in pieces of size bytes to a Bedrock stream tap and return its usage."""
    tap = UsageTap(EVENTSTREAM, None, MODEL)
    for pos in range(0, len(body), size):
        tap.feed(body[pos:pos + size])
    return tap.result()


def test_test_encoder_matches_published_frames() -> None:
    assert frame(b'{"foo": "bar"}') == KNOWN_FRAME_NO_HEADERS
    assert frame(b'{"foo": "bar"}', [("content-type", "application/json")]) == KNOWN_FRAME_CONTENT_TYPE


def test_reader_reads_published_frames() -> None:
    frames: list[tuple[dict[str, str], bytes]] = []
    reader = EventStreamReader(lambda headers, payload: frames.append((parse_headers(headers), payload)))
    reader.feed(KNOWN_FRAME_NO_HEADERS + KNOWN_FRAME_CONTENT_TYPE)
    assert frames == [({}, b'{"foo": "bar"}'), ({"content-type": "application/json"}, b'{"foo": "bar"}')]


def test_converse_stream_whole() -> None:
    assert feed_in_pieces(STREAM, len(STREAM)) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 12, 13, 16, 64, 333])
def test_converse_stream_in_pieces(size: int) -> None:
    assert feed_in_pieces(STREAM, size) == EXPECTED


def test_converse_stream_split_at_every_position() -> None:
    for cut in range(1, len(STREAM)):
        tap = UsageTap(EVENTSTREAM, None, MODEL)
        tap.feed(STREAM[:cut])
        tap.feed(STREAM[cut:])
        assert tap.result() == EXPECTED, f"split at byte {cut}"


def test_other_header_types_are_skipped() -> None:
    headers: list[tuple[str, str | int | bool | bytes]] = [
        (":event-type", "metadata"), ("x-flag", True), ("x-count", 7), ("x-blob", b"\x00\x01\x02"),
        (":message-type", "event")]
    body = frame(json.dumps({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}).encode(), headers)
    assert feed_in_pieces(body, 4) == Usage(model=MODEL, input_tokens=1, output_tokens=2)
    (headers_len,) = struct.unpack(">I", body[4:8])
    assert parse_headers(body[12:12 + headers_len]) == {":event-type": "metadata", ":message-type": "event"}


def test_exception_messages_are_ignored() -> None:
    # Even one whose payload looks like usage: only event messages are read.
    error = frame(b'{"message":"Too many requests","usage":{"inputTokens":5,"outputTokens":5}}',
                  [(":exception-type", "throttlingException"), (":content-type", "application/json"),
                   (":message-type", "exception")])
    assert feed_in_pieces(error, 7) == Usage(model=MODEL)


def test_corrupt_frame_stops_reading() -> None:
    corrupt = bytearray(STREAM)
    corrupt[40] ^= 0xFF  # inside the first frame's payload: its message CRC fails
    assert feed_in_pieces(bytes(corrupt), 9).is_empty()
    bad_prelude = bytearray(STREAM)
    bad_prelude[2] ^= 0x01
    assert feed_in_pieces(bytes(bad_prelude), 9).is_empty()


def test_stream_cut_inside_the_metadata_frame_gives_no_usage() -> None:
    assert feed_in_pieces(STREAM[:-5], 17).is_empty()


def test_oversized_frame_is_skipped_without_being_held() -> None:
    big = event("contentBlockDelta", {"delta": {"text": "x" * 300_000}})
    body = big + STREAM
    tap = UsageTap(EVENTSTREAM, None, MODEL, max_event_bytes=64 * 1024)
    for pos in range(0, len(body), 4096):
        tap.feed(body[pos:pos + 4096])
        assert tap.held_bytes <= 64 * 1024 + 4096
    assert tap.result() == EXPECTED


def invoke_chunk(inner: dict[str, object]) -> bytes:
    """Return an InvokeModelWithResponseStream chunk event wrapping the model's own event."""
    encoded = base64.b64encode(json.dumps(inner).encode()).decode()
    return frame(json.dumps({"bytes": encoded}).encode(), [(":event-type", "chunk"),
                                                          (":content-type", "application/json"),
                                                          (":message-type", "event")])


def test_invoke_model_stream_of_anthropic_events() -> None:
    body = b"".join([
        invoke_chunk({"type": "message_start", "message": {"id": "msg_bdrk_01", "type": "message", "role": "assistant",
                                                           "model": "claude-3-5-haiku-20241022", "content": [],
                                                           "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        invoke_chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        invoke_chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}}),
        invoke_chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 12, "outputTokenCount": 6, "invocationLatency": 511, "firstByteLatency": 398}}),
    ])
    for size in (1, 10, len(body)):
        assert feed_in_pieces(body, size) == Usage(model="claude-3-5-haiku-20241022", input_tokens=12, output_tokens=6)


def test_eventstream_garbage_never_raises() -> None:
    for body in (b"\x00" * 64, b"\xff" * 64, frame(b"not json", [(":event-type", "metadata")]),
                 frame(b'{"bytes": "***"}', [(":event-type", "chunk")]),
                 frame(b"{}", [(":event-type", "chunk")]),
                 struct.pack(">II", 8, 0) + struct.pack(">I", zlib.crc32(struct.pack(">II", 8, 0)))):
        assert feed_in_pieces(body, 3).is_empty()
