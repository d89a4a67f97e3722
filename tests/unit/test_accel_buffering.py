"""Streamed answers tell nginx not to buffer them (X-Accel-Buffering: no); an upstream's X-Accel-* never pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses
from flask.testing import FlaskClient

from tests.conftest import gw_headers

OPENAI = "https://api.openai.com/v1"
ANTHROPIC = "https://api.anthropic.com/v1"
GEMINI = "https://generativelanguage.googleapis.com"
SSE = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'


@pytest.fixture
def upstream() -> Iterator[responses.RequestsMock]:
    """Yield a strict `responses` mock: an unfired registration fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def proxy_call(client: FlaskClient, path: str, provider: str = "openai"):  # type: ignore[no-untyped-def]
    res = client.post(path, json={"stream": True},
                      headers={**gw_headers(x_portkey_provider=provider), "Authorization": "Bearer k"})
    res.get_data()
    return res


@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8",
                                          "application/vnd.amazon.eventstream", "application/x-ndjson"])
def test_a_streamed_answer_is_marked_unbuffered_and_a_whole_one_is_not(client: FlaskClient, upstream,
                                                                      content_type: str) -> None:
    upstream.post(f"{OPENAI}/chat/completions", body=SSE, content_type=content_type)
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "c"})
    res = proxy_call(client, "/v1/chat/completions")
    assert res.status_code == 200
    assert res.headers.getlist("X-Accel-Buffering") == ["no"]
    # A whole answer is left to the proxy's buffering, which frees a gateway thread before a slow client is done.
    whole = proxy_call(client, "/v1/chat/completions")
    assert whole.status_code == 200 and "X-Accel-Buffering" not in whole.headers


def test_a_translated_stream_is_marked_unbuffered(client: FlaskClient, upstream) -> None:
    events = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
              b'"role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}'
              b'\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    upstream.post(f"{ANTHROPIC}/messages", body=events, content_type="text/event-stream")
    res = client.post("/v1/chat/completions", headers={**gw_headers(x_portkey_provider="anthropic"), "x-api-key": "k"},
                      json={"model": "claude-x", "max_tokens": 5, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]})
    assert b"[DONE]" in res.get_data()
    assert res.headers["X-Accel-Buffering"] == "no"


def test_geminis_json_array_stream_is_marked_unbuffered(client: FlaskClient, upstream) -> None:
    upstream.post(f"{GEMINI}/models/g:streamGenerateContent", body=b'[{"candidates":[]}\n,{"candidates":[]}]',
                  content_type="application/json")
    res = proxy_call(client, "/v1/models/g:streamGenerateContent", provider="google")
    assert res.status_code == 200
    assert res.headers["X-Accel-Buffering"] == "no"


def test_an_upstreams_x_accel_headers_never_reach_nginx(client: FlaskClient, upstream) -> None:
    # nginx obeys X-Accel-Redirect from its upstream: a provider (or a custom host) must not steer it.
    upstream.post(f"{OPENAI}/chat/completions", json={"id": "c"},
                  headers={"X-Accel-Redirect": "/internal/secret", "X-Accel-Buffering": "yes",
                           "X-Accel-Limit-Rate": "1", "X-Other": "kept"})
    res = proxy_call(client, "/v1/chat/completions")
    assert not [name for name in res.headers.keys() if name.lower().startswith("x-accel-")]
    assert res.headers["X-Other"] == "kept"
