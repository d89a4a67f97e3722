"""Odd characters in what becomes an upstream header, URL part or translated body are a 400 naming the field.

A lone surrogate (`"\\ud800"`, valid JSON but not Unicode) or a control character (CR, LF, NUL, other C0, DEL)
can reach the gateway inside a config (`x-portkey-config` is JSON), an option header, a model id or a message.
Where such a value would become a header, a URL part or a re-encoded body it must be refused with a 400 that
names the field; where it is harmless (a control character inside a JSON string, anything in a body relayed as the
client sent it) the call goes through. Never a 500, and no request carrying a bad value reaches the (mocked) upstream.

The cases cover every adapter and every such string: each (route, provider, field) with each kind of odd value,
the character and its position drawn from a fixed seed, so a failure repeats.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from tests.conftest import GATEWAY_KEY, make_settings

SEED = 15
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

# Kinds of odd values. CONTROL, SURROGATE and WIDE (beyond Latin-1) break a header; CONTROL, SURROGATE and DOT
# (a whole `.` or `..`) break a URL path segment; only SURROGATE breaks a body the gateway encodes again.
CONTROL, SURROGATE, WIDE, DOT, HARMLESS = "control", "surrogate", "wide", "dot", "harmless"
TRANSLATED = {"anthropic", "google", "vertex-ai", "cohere", "bedrock"}  # providers with an adapter on /v1/chat
MODEL_IN_PATH = {"google", "vertex-ai", "bedrock"}

# Valid provider fields, per provider: the base of every case, and the values odd characters are put into.
BASE: dict[str, dict[str, Any]] = {
    "openai": {"api_key": "sk-test", "openai_organization": "org-1", "openai_project": "proj_1"},
    "anthropic": {"api_key": "sk-ant", "anthropic_version": "2023-06-01", "anthropic_beta": "tools-2024-04-04"},
    "google": {"api_key": "g-key"},
    "vertex-ai": {"api_key": "ya29.token", "vertex_project_id": "my-project-123", "vertex_region": "us-central1"},
    "cohere": {"api_key": "co-key"},
    "bedrock": {"aws_region": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE",
                "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG", "aws_session_token": "FQoGZXIvYXdzEJr"},
    "azure-openai": {"api_key": "az-key", "resource_name": "my-resource", "deployment_id": "gpt-4o-prod",
                     "api_version": "2024-10-21"},
}
# Option headers each provider reads, and the option each one sets.
HEADERS: dict[str, dict[str, str]] = {
    "openai": {"x-portkey-openai-organization": "openai_organization", "x-portkey-openai-project": "openai_project"},
    "anthropic": {"x-portkey-anthropic-version": "anthropic_version", "x-portkey-anthropic-beta": "anthropic_beta"},
    "vertex-ai": {"x-portkey-vertex-project-id": "vertex_project_id", "x-portkey-vertex-region": "vertex_region"},
    "bedrock": {"x-portkey-aws-region": "aws_region", "x-portkey-aws-access-key-id": "aws_access_key_id",
                "x-portkey-aws-secret-access-key": "aws_secret_access_key",
                "x-portkey-aws-session-token": "aws_session_token"},
    "azure-openai": {"x-portkey-azure-resource-name": "resource_name", "x-portkey-azure-deployment-id": "deployment_id",
                     "x-portkey-azure-api-version": "api_version"},
}
# Options that go into an upstream host, path or query (the others go into headers, where Latin-1 travels).
URL_OPTIONS = {"resource_name", "deployment_id", "api_version", "vertex_project_id", "vertex_region", "aws_region"}
MODELS = {"google": "gemini-2.0-flash", "vertex-ai": "gemini-2.0-flash@001",
          "bedrock": "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-v1:0"}
# (route, provider) pairs: every adapter on the chat route, and the /v1/messages front to three kinds of provider.
ROUTES = [(CHAT, slug) for slug in BASE] + [(MESSAGES, "openai"), (MESSAGES, "anthropic"), (MESSAGES, "google")]

# Native answers by upstream host, so a harmless call ends in a normal 200.
OPENAI_ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
ANSWERS = [
    ("api.anthropic.com", {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                           "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 1, "output_tokens": 1}}),
    ("googleapis.com", {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]},
                                        "finishReason": "STOP"}]}),
    ("api.cohere.ai", {"id": "c", "finish_reason": "COMPLETE",
                       "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}}),
    ("amazonaws.com", {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                       "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1}}),
    ("", OPENAI_ANSWER),  # api.openai.com, *.openai.azure.com
]

# What may never reach an upstream header, and what may never reach its URL.
UNSENDABLE_HEADER = re.compile("[\x00-\x1f\x7f\ud800-\udfff]|[^\x00-\xff]")
UNSENDABLE_URL = re.compile("[\x00-\x20\x7f\ud800-\udfff]|/\\.{1,2}(?:/|$)")


@dataclass(frozen=True)
class Case:
    """One call: where the odd value goes, what kind it is, and what the answer must be."""

    route: str
    provider: str
    site: str  # "config:<field>", "header:<name>", "model", "override:model" or "content"
    kind: str
    value: str
    nested: bool  # the config field sits in targets[0] of a fallback rather than at the root
    list_content: bool  # the message content is a list of text parts rather than a string

    @property
    def field(self) -> str:
        return self.site.partition(":")[2] or self.site

    def __str__(self) -> str:
        return f"{self.route} {self.provider} {self.site} {self.kind} {self.value!r} nested={self.nested}"


def odd(rng: random.Random, base: str, kind: str, header: bool) -> str:
    """Return base with one odd character of the kind put at a random place (or replaced whole, for DOT).

    A header value gets no CR or LF: the test client refuses them, as an HTTP parser does."""
    if kind == DOT:
        return rng.choice((".", ".."))
    if kind == HARMLESS:
        return base
    controls = [c for c in range(0x20) if not (header and c in (0x0A, 0x0D))] + [0x7F]
    char = {CONTROL: lambda: chr(rng.choice(controls)),
            SURROGATE: lambda: chr(rng.randrange(0xD800, 0xE000)),
            # An astral character goes as a surrogate pair in the JSON escapes: a pair is no lone surrogate.
            WIDE: lambda: rng.choice("日€ł") + "🚀"}[kind]()
    at = rng.randrange(len(base) + 1)
    return base[:at] + char + base[at:]


def sites(route: str, provider: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Yield each site of a (route, provider) and the kinds of odd value worth putting there."""
    for name in (*BASE[provider], "forward_headers"):
        yield f"config:{name}", (CONTROL, SURROGATE, WIDE, HARMLESS)
    yield "config:custom_host", (CONTROL, SURROGATE)  # a harmless custom host would call it
    for name in HEADERS.get(provider, ()):
        yield f"header:{name}", (CONTROL, SURROGATE, WIDE, HARMLESS)  # the test client refuses CR and LF
    yield "header:x-portkey-custom-host", (CONTROL, SURROGATE)
    for site in ("model", "override:model"):
        yield site, (CONTROL, SURROGATE, WIDE, DOT, HARMLESS)
    yield "content", (CONTROL, SURROGATE, WIDE, HARMLESS)


def cases() -> list[Case]:
    """Return every (route, provider, site, kind) once, with seeded characters, places and shapes."""
    rng = random.Random(SEED)
    found = []
    for route, provider in ROUTES:
        for site, kinds in sites(route, provider):
            for kind in kinds:
                base = _base_value(provider, site, rng)
                if kind == HARMLESS and site.startswith(("config:", "header:")) and \
                        _option_of(provider, site) not in URL_OPTIONS:
                    base += "é"  # Latin-1 travels in a header
                value = odd(rng, base, kind, site.startswith("header:"))
                found.append(Case(route, provider, site, kind, value, rng.random() < 0.5,
                                  rng.random() < 0.5))
    for route, provider in ROUTES:  # every route meets every kind, both refused and harmless ones
        mine = [case for case in found if (case.route, case.provider) == (route, provider)]
        assert {case.kind for case in mine} == {CONTROL, SURROGATE, WIDE, DOT, HARMLESS}
        assert any(refused(case) for case in mine) and any(not refused(case) for case in mine)
    return found


def _base_value(provider: str, site: str, rng: random.Random) -> str:
    """Return the valid value of a site, that the odd character goes into."""
    kind, _, field = site.partition(":")
    if field in ("custom_host", "x-portkey-custom-host"):
        return "http://127.0.0.1:9/v1"
    if field == "forward_headers":
        return "x-client-tag"
    if kind == "config":
        return str(BASE[provider][field])
    if kind == "header":
        return str(BASE[provider][HEADERS[provider][field]])
    if site == "content":
        return "Hello there"
    return MODELS.get(provider) or rng.choice(("gpt-4o", "claude-3-5-haiku", "command-r"))


def _option_of(provider: str, site: str) -> str:
    field = site.partition(":")[2]
    return HEADERS.get(provider, {}).get(field, field)


def refused(case: Case) -> bool:
    """Return whether the case's value must be refused (or else go through)."""
    if case.kind == HARMLESS:
        return False
    if case.site.startswith(("config:", "header:")):
        return True  # every such field becomes a header or URL part
    # /v1/messages is Anthropic's own format: translated for every other provider.
    translated = case.provider != "anthropic" if case.route == MESSAGES else case.provider in TRANSLATED
    if case.kind == SURROGATE:
        return translated  # a relayed body goes as the client's bytes; a translated one is encoded again
    in_path = case.site.endswith("model") and case.provider in MODEL_IN_PATH and translated
    return in_path and case.kind in (CONTROL, DOT)


def names_field(case: Case, answer: dict[str, Any]) -> bool:
    """Return whether the 400 body names the case's field where the client put it."""
    text = json.dumps(answer)
    if case.site.startswith("config:"):
        path = ("targets,0," if case.nested else "") + case.field
        return f"path: {path}" in text
    if case.site == "header:x-portkey-custom-host":
        return "custom host" in text
    if case.site == "content":
        return ("messages[0].content[0].text" if case.list_content else "messages[0].content") in text
    return case.field in text


def request_of(case: Case) -> tuple[str, dict[str, str], bytes]:
    """Return the path, headers and body of the case's call."""
    target: dict[str, Any] = {"provider": case.provider, **BASE[case.provider]}
    content: Any = "Hello there"
    model = MODELS.get(case.provider, "gpt-4o")
    headers = {"x-portkey-api-key": GATEWAY_KEY, "Content-Type": "application/json"}
    if case.site.startswith("config:"):
        target[case.field] = [case.value] if case.field == "forward_headers" else case.value
    elif case.site.startswith("header:"):
        headers[case.field] = case.value
    elif case.site == "override:model":
        target["override_params"] = {"model": case.value}
    elif case.site == "model":
        model = case.value
    else:
        content = case.value
    if case.list_content:
        content = [{"type": "text", "text": content}]
    config = {"strategy": {"mode": "fallback"}, "targets": [target]} if case.nested else target
    headers["x-portkey-config"] = json.dumps(config)  # JSON escapes: the odd characters arrive decoded
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if case.route == MESSAGES:
        body["max_tokens"] = 16
    return case.route, headers, json.dumps(body).encode()


def answer_for(request: Any) -> tuple[int, dict[str, str], str]:
    """Answer a mocked upstream call in its provider's own format."""
    body = next(answer for host, answer in ANSWERS if host in request.url)
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


CASES = cases()
PLAIN_ANTHROPIC = Case(CHAT, "anthropic", "content", HARMLESS, "Hello there", nested=False, list_content=False)


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    # The provider hosts are allowed by name, so no case waits on a DNS lookup (the tests run offline).
    hosts = ("api.openai.com", "api.anthropic.com", "*.googleapis.com", "api.cohere.ai", "*.amazonaws.com",
             "*.openai.azure.com", "127.0.0.1")
    app: Flask = create_app(make_settings(custom_hosts_allow=hosts))
    app.testing = True
    return app.test_client()


@pytest.fixture(scope="module")
def upstream() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in ("POST", "GET"):
            mock.add_callback(method, re.compile(r"https?://.*"), callback=answer_for)
        yield mock


@pytest.mark.parametrize("case", CASES, ids=str)
def test_an_odd_value_is_a_400_naming_its_field_or_harmless(client: FlaskClient, upstream: responses.RequestsMock,
                                                            case: Case) -> None:
    upstream.calls.reset()
    path, headers, body = request_of(case)
    res = client.post(path, data=body, headers=headers)
    answer = res.get_json()
    if refused(case):
        assert res.status_code == 400, (res.status_code, answer)
        assert names_field(case, answer), answer
        assert len(upstream.calls) == 0
        return
    assert res.status_code == 200, (res.status_code, answer)
    assert len(upstream.calls) == 1
    sent = upstream.calls[0].request
    assert not UNSENDABLE_URL.search(sent.url), sent.url
    for name, value in sent.headers.items():
        assert not UNSENDABLE_HEADER.search(f"{name}{value}"), (name, value)


@pytest.mark.parametrize(("body", "where"), [
    (b'{"messages":[{"role":"user","content":"ok"},{"role":"user","content":[{"type":"text","text":"a\\ud800"}]}]}',
     "messages[1].content[0].text"),
    (b'{"messages":[{"role":"user","content":"hi"}],"stop":["x","\\udc00y"]}', "stop[1]"),
    (b'{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f",'
     b'"parameters":{"type":"object","properties":{"\\udbff":{}}}}}]}',
     "a key of tools[0].function.parameters.properties"),
    (b'{"messages":[{"role":"user","content":"hi"}],"metadata":{"my tag":"\\ud800"}}', 'metadata[\\"my tag\\"]'),
])
def test_a_lone_surrogate_in_a_translated_body_is_a_400_naming_where(client: FlaskClient,
                                                                     upstream: responses.RequestsMock, body: bytes,
                                                                     where: str) -> None:
    upstream.calls.reset()
    res = client.post(CHAT, data=body, headers=request_of(PLAIN_ANTHROPIC)[1])
    assert res.status_code == 400
    assert where in json.dumps(res.get_json())
    assert len(upstream.calls) == 0


def test_an_upstream_answer_with_a_lone_surrogate_is_relayed_escaped(client: FlaskClient) -> None:
    native = (b'{"id":"msg_1","type":"message","role":"assistant","model":"m","stop_reason":"end_turn",'
              b'"content":[{"type":"text","text":"half \\udc80 a pair"}]}')
    with responses.RequestsMock() as mock:
        mock.post("https://api.anthropic.com/v1/messages", body=native, content_type="application/json")
        _, headers, body = request_of(PLAIN_ANTHROPIC)
        res = client.post(CHAT, data=body, headers=headers)
    assert res.status_code == 200
    assert res.get_json()["choices"][0]["message"]["content"] == "half \udc80 a pair"

