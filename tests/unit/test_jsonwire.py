"""Compact JSON and the OpenAI-style error object: the exact bytes the gateway has always written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import UpstreamTimeout, openai_error
from app.jsonwire import compact, compact_bytes

VALUES: list[Any] = [
    {"b": 1, "a": [1.5, None, True, "x"]},
    {"text": "héllo ✓ 日本", "emoji": "🙂", "nested": {"z": {"y": []}}},
    "a \"quoted\" line\nbreak",
    [float("inf"), 10**30, -0.0],
]


@pytest.mark.parametrize("value", VALUES)
def test_compact_is_json_without_spaces_ascii_escaped_by_default(value: Any) -> None:
    assert compact(value) == json.dumps(value, separators=(",", ":"))
    assert compact_bytes(value) == json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("value", VALUES)
def test_compact_keeps_unicode_and_sorts_keys_when_asked(value: Any) -> None:
    assert compact(value, ensure_ascii=False) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert compact_bytes(value, sort_keys=True) == json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Tag:
    def __str__(self) -> str:
        return "tag-1"


def test_compact_writes_odd_values_with_the_default_given_and_refuses_them_without() -> None:
    value = {"tag": Tag()}
    assert compact(value, ensure_ascii=False, default=str) == '{"tag":"tag-1"}'
    with pytest.raises(TypeError):
        compact(value)


def test_a_lone_surrogate_is_escaped_in_ascii_and_refused_as_utf8() -> None:
    assert compact_bytes({"t": "\ud800"}) == b'{"t":"\\ud800"}'
    with pytest.raises(UnicodeEncodeError):
        compact_bytes({"t": "\ud800"}, ensure_ascii=False)


def test_openai_error_keeps_the_key_order_clients_see() -> None:
    assert compact(openai_error("boom")) == '{"message":"boom","type":"api_error","param":null,"code":null}'
    assert list(openai_error("m", "invalid_request_error", "model", "404")) == ["message", "type", "param", "code"]
    assert compact_bytes(UpstreamTimeout(50).body()) == (
        b'{"error":{"message":"Request exceeded the timeout sent in the request: 50ms",'
        b'"type":"timeout_error","param":null,"code":null}}')
