"""Tests of the fake provider itself, through real sockets with plain requests."""

from __future__ import annotations

import gzip
import hashlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.provider import FakeProvider, Received, pattern_bytes

OPENAI_AUTH = {"Authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGE = {"model": "claude-3-5-haiku", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """Run a fake provider for one test."""
    with FakeProvider() as provider:
        yield provider


def sse_events(text: str) -> list[dict[str, str]]:
    """Split a server-sent event stream into events of field name -> value."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            events.append(dict(line.split(": ", 1) for line in block.split("\n")))
    return events


def raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> tuple[bytes, BaseException | None]:
    """Send raw bytes and read until the server closes; return what arrived and any socket error."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            return received, exc
    return received, None


# --------------------------------------------------------------------------- OpenAI


def test_chat_completion_is_realistic(fake: FakeProvider) -> None:
    response = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello from fake openai", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions", "/v1/chat/completions/"])
def test_chat_route_is_mounted_at_root_and_v1(fake: FakeProvider, path: str) -> None:
    response = requests.post(fake.url + path, json=CHAT, headers=OPENAI_AUTH)
    assert response.json()["object"] == "chat.completion"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}])
def test_chat_requires_bearer_auth(fake: FakeProvider, headers: dict[str, str]) -> None:
    response = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_chat_rejects_invalid_json(fake: FakeProvider) -> None:
    response = requests.post(f"{fake.url}/v1/chat/completions", data=b"{not json", headers=OPENAI_AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_chat_stream_sends_chunks_usage_and_done(fake: FakeProvider) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {**OPENAI_AUTH, "x-fake-events": "4"}
    response = requests.post(f"{fake.url}/v1/chat/completions", json=payload, headers=headers)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    events = [event["data"] for event in sse_events(response.text)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    content = [chunk for chunk in chunks if chunk["choices"] and "content" in chunk["choices"][0]["delta"]]
    assert len(content) == 4
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_chat_stream_without_usage_defaults_to_three_chunks(fake: FakeProvider) -> None:
    payload = {**CHAT, "stream": True}
    response = requests.post(f"{fake.url}/v1/chat/completions", json=payload, headers=OPENAI_AUTH)
    chunks = [json.loads(event["data"]) for event in sse_events(response.text)[:-1]]
    assert len(chunks) == 3 + 1  # three content chunks and the finish chunk
    assert all("usage" not in chunk for chunk in chunks)


def test_stream_events_arrive_separated_in_time(fake: FakeProvider) -> None:
    headers = {**OPENAI_AUTH, "x-fake-events": "3", "x-fake-event-interval-ms": "100"}
    payload = {**CHAT, "stream": True}
    arrivals = []
    with requests.post(f"{fake.url}/v1/chat/completions", json=payload, headers=headers, stream=True) as response:
        for piece in response.iter_content(chunk_size=None):
            arrivals.append((time.monotonic(), piece))
    # Each event is its own HTTP chunk: 3 content chunks, the finish chunk and [DONE].
    assert len(arrivals) == 5
    assert arrivals[-1][1] == b"data: [DONE]\n\n"
    gaps = [later[0] - earlier[0] for earlier, later in pairwise(arrivals)]
    assert all(0.07 <= gap <= 0.5 for gap in gaps), gaps


def test_embeddings_and_models(fake: FakeProvider) -> None:
    embeddings = requests.post(f"{fake.url}/v1/embeddings", json={"model": "text-embedding-3-small",
                                                                  "input": ["a", "b"]}).json()
    assert embeddings["object"] == "list"
    assert [item["index"] for item in embeddings["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 8 for item in embeddings["data"])
    models = requests.get(f"{fake.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_message_is_realistic(fake: FakeProvider) -> None:
    response = requests.post(f"{fake.url}/v1/messages", json=MESSAGE, headers=ANTHROPIC_AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert (body["type"], body["role"], body["stop_reason"]) == ("message", "assistant", "end_turn")
    assert body["content"] == [{"type": "text", "text": "Hello from fake anthropic"}]
    assert body["model"] == "claude-3-5-haiku"
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0


@pytest.mark.parametrize(("headers", "payload", "status", "kind"), [
    ({"anthropic-version": "2023-06-01"}, MESSAGE, 401, "authentication_error"),
    ({"x-api-key": "k"}, MESSAGE, 400, "invalid_request_error"),
    (ANTHROPIC_AUTH, {"messages": MESSAGE["messages"]}, 400, "invalid_request_error"),
    (ANTHROPIC_AUTH, {"max_tokens": 5}, 400, "invalid_request_error"),
    (ANTHROPIC_AUTH, {**MESSAGE, "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error"),
])
def test_anthropic_validation(fake: FakeProvider, headers: dict, payload: dict, status: int, kind: str) -> None:
    response = requests.post(f"{fake.url}/v1/messages", json=payload, headers=headers)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]


def test_anthropic_stream_event_sequence(fake: FakeProvider) -> None:
    headers = {**ANTHROPIC_AUTH, "x-fake-events": "2"}
    response = requests.post(f"{fake.url}/messages", json={**MESSAGE, "stream": True}, headers=headers)
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert [event["event"] for event in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    for event in events:
        assert json.loads(event["data"])["type"] == event["event"]


def test_anthropic_stream_stamps_each_text_delta_with_its_send_time(fake: FakeProvider) -> None:
    headers = {**ANTHROPIC_AUTH, "x-fake-events": "3", "x-fake-event-interval-ms": "30", "x-fake-stamp": "1"}
    before = time.time()
    response = requests.post(f"{fake.url}/messages", json={**MESSAGE, "stream": True}, headers=headers)
    stamps = [float(json.loads(event["data"])["delta"]["text"]) for event in sse_events(response.text)
              if event["event"] == "content_block_delta"]
    assert len(stamps) == 3
    assert before <= stamps[0] and all(b - a >= 0.025 for a, b in pairwise(stamps))


# --------------------------------------------------------------------------- Cohere


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_rerank_scores_every_document_in_descending_order(fake: FakeProvider, path: str) -> None:
    payload = {"model": "rerank-v3.5", "query": "red apple",
               "documents": ["green pear", "red apple pie", {"text": "a red car"}]}
    response = requests.post(fake.url + path, json=payload, headers=OPENAI_AUTH)
    body = response.json()
    assert sorted(result["index"] for result in body["results"]) == [0, 1, 2]
    scores = [result["relevance_score"] for result in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["results"][0]["index"] == 1
    assert body["meta"] == {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}
    assert body["id"]


def test_rerank_requires_bearer_auth(fake: FakeProvider) -> None:
    response = requests.post(f"{fake.url}/v2/rerank", json={"query": "q", "documents": ["d"]})
    assert response.status_code == 401


# --------------------------------------------------------------------------- echo


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_echo_describes_the_request(fake: FakeProvider, method: str) -> None:
    response = requests.request(method, f"{fake.url}/v1/collections/my-collection?b=2&a=%20x&a=1",
                                data=b"hello", headers={"X-Custom": "Value"})
    body = response.json()
    assert body["method"] == method
    assert body["path"] == "/v1/collections/my-collection"
    assert body["query"] == "b=2&a=%20x&a=1"
    assert body["headers"]["x-custom"] == "Value"
    assert body["body_length"] == 5 and body["body_text"] == "hello"
    assert body["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_echo_head_has_length_but_no_body(fake: FakeProvider) -> None:
    response = requests.head(f"{fake.url}/echo/anything")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


def test_echo_omits_text_of_binary_bodies(fake: FakeProvider) -> None:
    body = requests.post(f"{fake.url}/echo/anything", data=b"\xff\xfe\x00").json()
    assert body["body_text"] is None and body["body_length"] == 3


def test_requests_are_recorded(fake: FakeProvider) -> None:
    requests.post(f"{fake.url}/echo/x?q=1", data=b"abc", headers={"X-Trace": "t1"})
    [received] = fake.requests
    assert received == Received("POST", "/echo/x", "q=1", received.headers, b"abc")
    assert received.headers["x-trace"] == "t1"
    assert all(name == name.lower() for name in received.headers)


# --------------------------------------------------------------------------- request bodies


def test_chunked_request_body_is_decoded(fake: FakeProvider) -> None:
    pieces = [b"first,", b"second,", b"third"]
    body = requests.post(f"{fake.url}/echo/chunked", data=iter(pieces)).json()
    assert body["body_text"] == "first,second,third"
    assert fake.requests[0].headers["transfer-encoding"] == "chunked"
    assert fake.requests[0].body == b"first,second,third"


def test_chunked_request_with_extensions_and_trailers(fake: FakeProvider) -> None:
    request = (b"POST /echo/raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: yes\r\n\r\n")
    received, error = raw_exchange(fake.url, request)
    assert error is None and received.startswith(b"HTTP/1.1 200")
    assert fake.requests[0].body == b"hello!"


def test_huge_request_bodies_stream_in(fake: FakeProvider) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    chunked = requests.post(f"{fake.url}/echo/big", data=(piece for _ in range(100))).json()
    assert chunked["body_length"] == 100 * len(piece) and chunked["body_text"] is None
    assert chunked["body_sha256"] == hashlib.sha256(piece * 100).hexdigest()
    sized = requests.post(f"{fake.url}/echo/big", data=piece * 16).json()
    assert sized["body_length"] == 16 * len(piece)


# --------------------------------------------------------------------------- control headers


def test_status_header_forces_an_openai_error_and_retry_after(fake: FakeProvider) -> None:
    headers = {**OPENAI_AUTH, "x-fake-status": "429", "x-fake-retry-after": "7"}
    response = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": {"message": "fake error 429", "type": "fake_error",
                                         "param": None, "code": None}}


def test_success_status_header_keeps_normal_answer(fake: FakeProvider) -> None:
    headers = {**OPENAI_AUTH, "x-fake-status": "201"}
    response = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 201
    assert response.json()["object"] == "chat.completion"


def test_delay_header_delays_the_answer(fake: FakeProvider) -> None:
    started = time.monotonic()
    requests.get(f"{fake.url}/echo/slow", headers={"x-fake-delay-ms": "200"})
    assert 0.2 <= time.monotonic() - started < 2


def test_body_bytes_header_sends_pattern_bytes(fake: FakeProvider) -> None:
    size = 3 * 65536 + 123
    response = requests.get(f"{fake.url}/anything", headers={"x-fake-body-bytes": str(size)})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(size)
    assert response.content == pattern_bytes(size)


def test_gzip_header_compresses_json(fake: FakeProvider) -> None:
    with requests.get(f"{fake.url}/echo/zip", headers={"x-fake-gzip": "1"}, stream=True) as response:
        assert response.headers["content-encoding"] == "gzip"
        raw = response.raw.read(decode_content=False)
    assert json.loads(gzip.decompress(raw))["path"] == "/echo/zip"


def test_reset_header_aborts_with_rst_after_partial_body(fake: FakeProvider) -> None:
    request = b"GET /echo/x HTTP/1.1\r\nHost: x\r\nx-fake-reset: 1\r\n\r\n"
    received, error = raw_exchange(fake.url, request)
    assert isinstance(error, ConnectionResetError)
    assert received.startswith(b"HTTP/1.1 200") and b"Content-Length: 100000" in received
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{fake.url}/echo/x", headers={"x-fake-reset": "1"})


def test_garbage_header_sends_non_http(fake: FakeProvider) -> None:
    received, error = raw_exchange(fake.url, b"GET / HTTP/1.1\r\nHost: x\r\nx-fake-garbage: 1\r\n\r\n")
    assert (received, error) == (b"this is not http\r\n\r\n", None)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(fake.url, headers={"x-fake-garbage": "1"})


def test_redirect_and_cookie_headers(fake: FakeProvider) -> None:
    headers = {"x-fake-redirect": "http://elsewhere.invalid/x", "x-fake-set-cookie": "session=abc; Path=/"}
    response = requests.get(f"{fake.url}/echo/r", headers=headers, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "http://elsewhere.invalid/x"
    assert response.headers["set-cookie"] == "session=abc; Path=/"
    assert response.content


def test_bad_control_header_is_a_400(fake: FakeProvider) -> None:
    response = requests.get(f"{fake.url}/echo/x", headers={"x-fake-delay-ms": "soon"})
    assert response.status_code == 400


def test_hang_holds_until_client_gives_up(fake: FakeProvider) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{fake.url}/echo/h", headers={"x-fake-hang": "1"}, timeout=0.3)
    assert requests.get(f"{fake.url}/echo/after").status_code == 200


def test_stop_is_quick_with_a_hanging_request_outstanding() -> None:
    provider = FakeProvider().start()
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(requests.get(f"{provider.url}/x", headers={"x-fake-hang": "1"}, timeout=10))
        except requests.exceptions.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    provider.wait_for_requests(1)
    started = time.monotonic()
    provider.stop()
    assert time.monotonic() - started < 1
    caller.join(timeout=5)
    assert isinstance(outcome[0], requests.exceptions.ConnectionError)


def test_stop_is_quick_with_idle_keep_alive_connections() -> None:
    provider = FakeProvider().start()
    with requests.Session() as session:
        session.get(f"{provider.url}/x")
        started = time.monotonic()
        provider.stop()
        assert time.monotonic() - started < 1
        with pytest.raises(requests.exceptions.ConnectionError):
            session.get(f"{provider.url}/x", timeout=2)


# --------------------------------------------------------------------------- scripting and inspection


def test_enqueued_answers_are_served_in_order_then_normal_behaviour(fake: FakeProvider) -> None:
    fake.enqueue(status=503, body={"error": "busy"}, headers={"retry-after": "1"})
    fake.enqueue(status=200, body="plain text")
    fake.enqueue(body=b"\x00\x01", headers={"Content-Type": "application/x-thing"}, delay_ms=100)
    first = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH)
    assert (first.status_code, first.json(), first.headers["retry-after"]) == (503, {"error": "busy"}, "1")
    second = requests.get(f"{fake.url}/anywhere")
    assert (second.text, second.headers["content-type"]) == ("plain text", "text/plain; charset=utf-8")
    started = time.monotonic()
    third = requests.get(f"{fake.url}/anywhere")
    assert time.monotonic() - started >= 0.1
    assert (third.content, third.headers["content-type"]) == (b"\x00\x01", "application/x-thing")
    fourth = requests.post(f"{fake.url}/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH)
    assert fourth.json()["object"] == "chat.completion"


def test_enqueue_overrides_control_headers(fake: FakeProvider) -> None:
    fake.enqueue(status=202, body={"ok": True})
    response = requests.get(f"{fake.url}/x", headers={"x-fake-status": "500"})
    assert (response.status_code, response.json()) == (202, {"ok": True})


def test_keep_alive_reuses_one_connection(fake: FakeProvider) -> None:
    url = fake.url
    calls: list[Callable[[requests.Session], requests.Response]] = [
        lambda s: s.post(f"{url}/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH),
        lambda s: s.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=OPENAI_AUTH),
        lambda s: s.post(f"{url}/v1/messages", json={**MESSAGE, "stream": True}, headers=ANTHROPIC_AUTH),
        lambda s: s.post(f"{url}/v1/messages", json=MESSAGE),
        lambda s: s.get(f"{url}/v1/models"),
        lambda s: s.head(f"{url}/echo/head"),
        lambda s: s.put(f"{url}/echo/put", data=iter([b"a", b"b"])),
        lambda s: s.get(f"{url}/echo/err", headers={"x-fake-status": "500"}),
        lambda s: s.get(f"{url}/echo/zip", headers={"x-fake-gzip": "1"}),
        lambda s: s.get(f"{url}/echo/bytes", headers={"x-fake-body-bytes": "100000"}),
        lambda s: s.get(f"{url}/echo/redirect", headers={"x-fake-redirect": "/elsewhere"}, allow_redirects=False),
    ]
    fake.enqueue(status=204)
    with requests.Session() as session:
        session.get(f"{url}/scripted")
        for index in range(19):
            calls[index % len(calls)](session)  # not streamed: each body is read in full
    assert len(fake.requests) == 20
    assert fake.connections == 1


def test_connections_are_counted(fake: FakeProvider) -> None:
    for _ in range(3):
        requests.get(f"{fake.url}/x", headers={"Connection": "close"})
    assert fake.connections == 3


def test_wait_for_requests_waits_and_times_out(fake: FakeProvider) -> None:
    threading.Timer(0.1, lambda: requests.get(f"{fake.url}/late")).start()
    [late] = fake.wait_for_requests(1, timeout=5)
    assert late.path == "/late"
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(2, timeout=0.1)


def test_reset_clears_requests_script_and_connections(fake: FakeProvider) -> None:
    requests.get(f"{fake.url}/x")
    fake.enqueue(status=500)
    fake.reset()
    assert (fake.requests, fake.connections) == ([], 0)
    assert requests.get(f"{fake.url}/x").status_code == 200


def test_url_needs_a_started_provider() -> None:
    provider = FakeProvider()
    with pytest.raises(RuntimeError):
        _ = provider.url
    with provider:
        assert provider.url.startswith("http://127.0.0.1:")
    provider.stop()  # stopping twice is harmless


def test_command_line_serves_until_sigterm() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.provider", "--port", "0"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        assert ready, "the fake provider printed nothing"
        line = process.stdout.readline().strip()
        assert line.startswith("fake provider listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert requests.get(f"{url}/v1/models").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
