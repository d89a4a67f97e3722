"""Cache keys (SPEC 9.3): stable for the same request, different for any changed field, secret-free."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from app.cache import cache_key

SECRET = "sk-live-very-secret-credential-0123456789"
BASE: dict[str, Any] = {
    "provider": "openai",
    "url": "https://api.openai.com/v1/chat/completions",
    "method": "POST",
    "body": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}',
    "content_type": "application/json",
    "credential": SECRET,
    "namespace": "team-a",
}


def key(**changes: Any) -> str:
    """Return the key of BASE with some fields changed."""
    return cache_key(**{**BASE, **changes})


def test_same_request_gives_the_same_sha256_hex_key() -> None:
    assert key() == key()
    assert len(key()) == 64
    int(key(), 16)


def test_json_key_order_and_whitespace_do_not_matter() -> None:
    reordered = b'{ "temperature":0,\n  "messages":[{"content":"hi","role":"user"}],"model":"gpt-4o-mini" }'
    assert key(body=reordered) == key()


def test_json_escapes_and_literal_characters_are_the_same_json() -> None:
    assert key(body=b'{"q": "caf\\u00e9"}') == key(body='{"q":"café"}'.encode())


def test_content_type_parameters_do_not_matter_for_json() -> None:
    assert key(content_type="Application/JSON; charset=utf-8") == key()


def test_untyped_json_body_is_canonicalised_too() -> None:
    assert key(content_type=None, body=b'{"b": 1, "a": 2}') == key(content_type=None, body=b'{"a":2,"b":1}')


@pytest.mark.parametrize("field, value", [
    ("provider", "azure-openai"),
    ("url", "https://api.openai.com/v1/completions"),
    ("method", "PUT"),
    ("body", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}'),
    ("body", b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o-mini", "temperature": 0.0}'),
    ("body", None),
    ("body", b""),
    ("content_type", "text/plain"),
    ("credential", SECRET + "x"),
    ("credential", None),
    ("namespace", "team-b"),
    ("namespace", None),
    ("namespace", ""),
])
def test_each_field_change_gives_another_key(field: str, value: Any) -> None:
    assert key(**{field: value}) != key()


def test_array_order_matters() -> None:
    assert key(body=b'{"stop": ["a", "b"]}') != key(body=b'{"stop": ["b", "a"]}')


def test_absent_and_empty_values_differ() -> None:
    assert key(credential=None) != key(credential="")
    assert key(namespace=None) != key(namespace="")
    assert key(body=None) != key(body=b"")


def test_fields_cannot_bleed_into_each_other() -> None:
    assert key(provider="ab", url="c") != key(provider="a", url="bc")
    assert key(namespace="x", credential="y") != key(namespace="y", credential="x")


def test_get_requests_are_keyed_on_path_and_query() -> None:
    url = "https://api.openai.com/v1/models"
    first = key(method="GET", url=url + "?limit=1", body=None, content_type=None)
    assert first == key(method="GET", url=url + "?limit=1", body=None, content_type=None)
    assert first != key(method="GET", url=url + "?limit=2", body=None, content_type=None)
    assert first != key(method="GET", url=url, body=None, content_type=None)


def test_method_case_does_not_matter() -> None:
    assert key(method="post") == key()


def test_non_json_bodies_are_keyed_on_raw_bytes() -> None:
    assert key(content_type="text/plain", body=b"a b") != key(content_type="text/plain", body=b"a  b")
    assert key(content_type="text/plain", body=b"a b") == key(content_type="text/plain", body=b"a b")


def test_unparseable_json_falls_back_to_raw_bytes() -> None:
    broken = b'{"model": "gpt-4o-mini",'
    assert key(body=broken) == key(body=broken)
    assert key(body=broken) != key(body=broken + b" ")
    assert key(body=b"\xff\xfe not utf-8") == key(body=b"\xff\xfe not utf-8")
    assert key(body=b"[" * 100_000) == key(body=b"[" * 100_000)  # too deep to parse is not an error


def test_credential_is_not_recoverable_from_the_key() -> None:
    first, second = key(), key(credential="sk-other-credential")
    assert SECRET not in first
    assert first != second
    # Not a bare hash of the secret either: the key mixes the whole request under a domain prefix.
    for digest in (hashlib.sha256(SECRET.encode()).hexdigest(), hashlib.sha1(SECRET.encode()).hexdigest()):
        assert digest not in first


def test_an_already_parsed_body_gives_the_same_key() -> None:
    from app.cache import cache_key as key
    raw = b'{"b": 1, "a": [1, 2]}'
    common = {"provider": "openai", "url": "https://x/v1/chat", "method": "POST", "body": raw,
              "content_type": "application/json", "credential": "sk-x", "namespace": None}
    assert key(**common) == key(**common, parsed_json={"a": [1, 2], "b": 1})
