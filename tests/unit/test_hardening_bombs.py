"""Compression bombs: every place the gateway inflates an upstream answer is bounded in what it inflates.

A client may point a custom host at its own server, so an "upstream" can answer a few hundred KB of gzip that
inflates to hundreds of MB. Each path below is fed such a bomb through the real app and a real loopback upstream;
the gateway must refuse it with a JSON 502 that names the problem, quickly, holding far less than the bomb
(docs/security.md). `measure` is the call sequence a benchmark can reuse for "peak growth per bomb path".
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider

MIB = 1 << 20
BOMB_MIB = 128  # what a whole-body bomb inflates to (from about 128 KB of gzip): 4 times the largest bound
STREAM_BOMB_MIB = 128  # what a stream bomb inflates to (events are slow to read even when refused early)
MAX_GROWTH = 64 * MIB  # the most memory one bombed call may take, peak, above what it started with
MAX_SECONDS = 5.0  # each refusal takes well under a second; without the bounds the stream ones took minutes

CHAT = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
# Padded, so that a bomb of them is few events: the refusal is what is timed, not event parsing.
PING = b'event: ping\ndata: {"type": "ping", "padding": "' + b"." * 4000 + b'"}\n\n'
MESSAGE_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
                 b'"role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,'
                 b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')


@cache
def bomb(unit: bytes, times: int, prefix: bytes = b"", encoding: str = "gzip") -> bytes:
    """Return a gzip (or zlib "deflate") body that inflates to prefix + unit * times, built in milliseconds.

    The unit is deflated once and its bytes repeated: a full flush after it makes each copy stand alone.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    segment = packer.compress(unit) + packer.flush(zlib.Z_FULL_FLUSH)
    deflated = head + segment * times + packer.flush(zlib.Z_FINISH)
    crc, adler = zlib.crc32(prefix), zlib.adler32(prefix)
    for _ in range(times):
        crc, adler = zlib.crc32(unit, crc), zlib.adler32(unit, adler)
    if encoding == "deflate":
        return b"\x78\xda" + deflated + struct.pack(">I", adler)
    size = (len(prefix) + len(unit) * times) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated + struct.pack("<II", crc, size)


def spaces_bomb(mib: int = BOMB_MIB, encoding: str = "gzip") -> bytes:
    """Return a bomb of JSON whitespace: valid leading JSON, so nothing but a bound stops reading it."""
    return bomb(b" " * MIB, mib, encoding=encoding)


def ping_bomb(mib: int = STREAM_BOMB_MIB, prefix: bytes = b"") -> bytes:
    """Return a gzip Anthropic stream of ping events (which translate to nothing), after an optional prefix."""
    unit = PING * (MIB // len(PING))
    return bomb(unit, mib, prefix)


@dataclass
class Measured:
    """What one bombed call answered, its peak memory above the start, and how long it took."""

    response: TestResponse
    peak_growth: int
    seconds: float

    @property
    def json(self) -> Any:
        return json.loads(self.response.get_data())


def measure(call: Callable[[], TestResponse]) -> Measured:
    """Run one call (reading its whole body) and return its answer, its peak Python memory growth and its time."""
    tracemalloc.start()
    try:
        start = time.perf_counter()
        response = call()
        response.get_data()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measured(response, peak, seconds)


@pytest.fixture
def upstream(fake_provider: FakeProvider) -> FakeProvider:
    """Return the session's fake provider, reset: the upstream every bomb is queued on."""
    return fake_provider


def via(upstream: FakeProvider, provider: str, **config: Any) -> dict[str, str]:
    """Return the headers of a call to a provider at the upstream, with a config."""
    target = {"provider": provider, "custom_host": f"{upstream.url}/v1", "api_key": PROVIDER_SECRET, **config}
    return {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(target)}


def chat(client: FlaskClient, headers: dict[str, str], **extra: Any) -> Callable[[], TestResponse]:
    return lambda: client.post("/v1/chat/completions", json={**CHAT, **extra}, headers=headers)


def enqueue_bomb(upstream: FakeProvider, body: bytes, status: int = 200, encoding: str = "gzip",
                 content_type: str = "application/json") -> None:
    upstream.enqueue(status, body, {"Content-Type": content_type, "Content-Encoding": encoding})


def events(text: str) -> list[str]:
    """Return the data of each server-sent event."""
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.startswith("data: ")]


def assert_refused(measured: Measured, what: str = "decompresses beyond", host: str = "127.0.0.1") -> None:
    """Assert a JSON 502 naming the host and the problem, within the memory and time bounds."""
    response = measured.response
    assert response.status_code == 502, response.get_data()[:300]
    assert response.headers["x-portkey-gateway-exception"] == "true"
    message = measured.json["message"]
    assert what in message and host in message, message
    assert measured.peak_growth < MAX_GROWTH, f"peak growth {measured.peak_growth / MIB:.0f} MiB"
    assert measured.seconds < MAX_SECONDS


OUTPUT_GUARDRAIL = {"output_guardrails": [{"default.wordCount": {"minWords": 1, "maxWords": 1000}, "deny": True}]}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_translated_answer_that_inflates_past_its_bound_is_a_502(client: FlaskClient, upstream: FakeProvider,
                                                                   encoding: str) -> None:
    enqueue_bomb(upstream, spaces_bomb(encoding=encoding), encoding=encoding)
    assert_refused(measure(chat(client, via(upstream, "anthropic"))))


def test_an_output_guardrail_never_inflates_a_bomb_to_check_it(client: FlaskClient, upstream: FakeProvider) -> None:
    enqueue_bomb(upstream, spaces_bomb())
    assert_refused(measure(chat(client, via(upstream, "openai", **OUTPUT_GUARDRAIL))))


def test_a_translated_error_body_that_inflates_past_its_bound_is_a_502(client: FlaskClient,
                                                                      upstream: FakeProvider) -> None:
    enqueue_bomb(upstream, spaces_bomb(), status=400)
    measured = measure(chat(client, via(upstream, "anthropic")))
    assert_refused(measured)
    assert "1048576 bytes" in measured.json["message"]  # only the first MiB is ever read, masked or relayed


@pytest.mark.parametrize("provider, config", [
    ("anthropic", {}),  # stored after translation: the bomb is refused before anything is stored
    ("openai", OUTPUT_GUARDRAIL),  # stored as the upstream's own bytes, then read by the after hook, hit or miss
])
def test_a_cached_call_refuses_a_bomb_every_time(client: FlaskClient, upstream: FakeProvider, provider: str,
                                                 config: dict[str, Any]) -> None:
    headers = via(upstream, provider, cache={"mode": "simple", "max_age": 60}, **config)
    for call in range(2):
        enqueue_bomb(upstream, spaces_bomb())
        measured = measure(chat(client, headers))
        assert_refused(measured, host="127.0.0.1" if call == 0 else "")
    upstream.reset()  # the answer a hit did not need is still queued


def test_a_translated_stream_bomb_before_the_first_event_is_a_502(client: FlaskClient, upstream: FakeProvider) -> None:
    enqueue_bomb(upstream, ping_bomb(), content_type="text/event-stream")
    assert_refused(measure(chat(client, via(upstream, "anthropic"), stream=True)))


def test_a_translated_stream_bomb_after_the_first_event_ends_in_an_error_event(client: FlaskClient,
                                                                               upstream: FakeProvider) -> None:
    enqueue_bomb(upstream, ping_bomb(prefix=MESSAGE_START), content_type="text/event-stream")
    measured = measure(chat(client, via(upstream, "anthropic"), stream=True))
    assert measured.response.status_code == 200
    data = events(measured.response.get_data(as_text=True))
    assert json.loads(data[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(data[-1])["error"]
    assert "decompresses beyond" in error["message"] and "127.0.0.1" in error["message"], error
    assert measured.peak_growth < MAX_GROWTH, f"peak growth {measured.peak_growth / MIB:.0f} MiB"
    assert measured.seconds < MAX_SECONDS


def test_a_small_body_may_not_inflate_more_than_a_hundred_times(client: FlaskClient, upstream: FakeProvider) -> None:
    body = spaces_bomb(8)  # about 8 KB of gzip for 8 MiB: within the 16 MiB a guardrail reads, not within 100x
    assert len(body) * 100 < MIB
    enqueue_bomb(upstream, body)
    measured = measure(chat(client, via(upstream, "openai", **OUTPUT_GUARDRAIL)))
    assert_refused(measured)
    assert f"beyond {MIB} bytes" in measured.json["message"]


def test_a_body_that_does_not_inflate_is_a_502_not_a_500(client: FlaskClient, upstream: FakeProvider) -> None:
    enqueue_bomb(upstream, b"\x1f\x8b\x08\x00not gzip at all")
    assert_refused(measure(chat(client, via(upstream, "openai", **OUTPUT_GUARDRAIL))), "does not decompress")


def test_a_compressed_answer_within_its_bounds_is_read() -> None:
    from app.call.answer import Answer
    body = json.dumps({"choices": [{"message": {"content": "x" * 1000}}]}).encode()
    for encoding, packed in (("gzip", bomb(body, 3)), ("deflate", zlib.compress(body * 3)),
                             ("deflate", bomb(body, 3, encoding="deflate"))):
        answer = Answer.whole(200, packed, [("Content-Encoding", encoding)])
        assert answer.decoded_body(4 * len(body)) == body * 3


def test_a_compressed_stream_in_several_gzip_members_is_translated_whole(client: FlaskClient,
                                                                         upstream: FakeProvider) -> None:
    native = requests.post(f"{upstream.url}/v1/messages", json={**CHAT, "stream": True},
                           headers={"x-fake-events": "3000", "x-api-key": "k", "anthropic-version": "2023-06-01"},
                           timeout=10).content
    assert len(native) > 256 * 1024  # more than one step of inflating: the backlog is translated too
    half = len(native) // 2
    members = gzip.compress(native[:half]) + gzip.compress(native[half:])
    enqueue_bomb(upstream, members, content_type="text/event-stream")
    res = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=via(upstream, "anthropic"))
    assert res.status_code == 200
    chunks = [json.loads(data) for data in events(res.get_data(as_text=True))[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    deltas = [json.loads(line.removeprefix("data: "))["delta"] for line in native.decode().splitlines()
              if line.startswith("data: ") and "text_delta" in line]
    assert text == "".join(delta["text"] for delta in deltas)  # every member read, nothing lost between steps
