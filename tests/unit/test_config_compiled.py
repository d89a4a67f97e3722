"""Configs compiled once: inheritance resolved and guardrail shorthand expanded when a config is parsed or loaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient

from app.config.models import CachePolicy, RetryPolicy, Target
from app.config.schema import parse_config
from app.guardrails import expand_hooks, shorthand
from app.pipeline.guardrail_stage import leaf_hooks
from app.pipeline.resolve import parse_config_text
from app.settings import load_settings
from tests.conftest import PROVIDER_SECRET, gw_headers

A = "https://a.example.com/v1"
B = "https://b.example.com/v1"
CALLS = 50

# Every kind of node, nested, with every inherited field set above the leaves that inherit it.
NESTED: dict[str, Any] = {
    "retry": {"attempts": 2, "on_status_codes": [503]},
    "cache": {"mode": "simple", "max_age": 60},
    "override_params": {"temperature": 0, "max_tokens": 5},
    "forward_headers": ["x-team"],
    "input_guardrails": [{"default.wordCount": {"minWords": 0, "maxWords": 1000}}],
    "strategy": {"mode": "fallback"},
    "targets": [
        {"strategy": {"mode": "loadbalance"}, "override_params": {"max_tokens": 7}, "request_timeout": 900,
         "targets": [{"provider": "openai", "weight": 1},
                     {"provider": "groq", "cache": {"mode": "simple", "max_age": 5}, "weight": 2}]},
        {"strategy": {"mode": "conditional", "default": "cheap",
                      "conditions": [{"query": {"metadata.tier": "pro"}, "then": "fast"}]},
         "output_guardrails": [{"default.notNull": {}}],
         "targets": [{"name": "fast", "provider": "anthropic", "retry": {"attempts": 0}},
                     {"name": "cheap", "provider": "cohere", "forward_headers": ["x-other"],
                      "input_guardrails": [{"default.wordCount": {"minWords": 1, "maxWords": 9}}]}]},
    ],
}

# Target's own fields: a compiled node adds its expanded hooks, which the comparison leaves to leaf_hooks.
_FIELDS = tuple(item.name for item in fields(Target) if item.name != "targets")


def per_call_merge(parent: Target, child: Target) -> Target:
    """Return what the router's merge produced per call before configs were compiled (the reference)."""
    changes: dict[str, Any] = {}
    if parent.override_params:
        changes["override_params"] = {**parent.override_params, **(child.override_params or {})}
    for name in ("retry", "cache", "request_timeout", "custom_host", "forward_headers", "strict_open_ai_compliance",
                 "before_request_hooks", "after_request_hooks", "input_guardrails", "output_guardrails"):
        if getattr(child, name) is None and getattr(parent, name) is not None:
            changes[name] = getattr(parent, name)
    return replace(child, **changes) if changes else child


def walk(node: Target, parent: Target, path: str, merge: Any) -> Iterator[tuple[str, Target]]:
    """Yield (path, merged node) for every node, merging on the way down as the router does."""
    node = merge(parent, node)
    yield path, node
    for index, child in enumerate(node.targets):
        yield from walk(child, node, f"{path}.targets[{index}]", merge)


def own_fields(node: Target) -> dict[str, Any]:
    return {name: getattr(node, name) for name in _FIELDS}


def test_the_same_config_text_gives_the_same_compiled_config() -> None:
    text = json.dumps(NESTED)
    first = parse_config_text(text)
    assert parse_config_text(text) is first
    leaf = first.targets[0].targets[1]
    # The parsed tree already holds what each node inherits, before any call walks it.
    assert leaf.retry == RetryPolicy(attempts=2, on_status_codes=(503,))
    assert leaf.override_params == {"temperature": 0, "max_tokens": 7}
    assert leaf.forward_headers == ("x-team",) and leaf.request_timeout == 900
    assert leaf_hooks(leaf) is leaf_hooks(first.targets[0].targets[0])


def test_merged_leaves_equal_the_per_call_merge() -> None:
    text = json.dumps(NESTED)
    expected = dict(walk(parse_config(NESTED), Target(), "config", per_call_merge))
    compiled = parse_config_text(text)
    # As it is stored, which is how the router walks it now: no merge per call.
    stored = dict(walk(compiled, Target(), "config", lambda parent, node: node))
    assert stored.keys() == expected.keys() and len(expected) == 7
    for path, reference in expected.items():
        assert own_fields(stored[path]) == own_fields(reference), path
        if reference.is_leaf:
            before, after = expand_hooks(reference.before_request_hooks, reference.after_request_hooks,
                                         reference.input_guardrails, reference.output_guardrails)
            hooks = leaf_hooks(stored[path])
            assert hooks is not None and (hooks.before, hooks.after) == (before, after), path
    leaf = stored["config.targets[1].targets[1]"]
    assert leaf.cache == CachePolicy(mode="simple", max_age=60) and leaf.forward_headers == ("x-other",)
    assert leaf.retry == RetryPolicy(attempts=2, on_status_codes=(503,))


# A conditional over two leaves that both inherit the root's guardrail: metadata picks the leaf per call.
GUARDED: dict[str, Any] = {
    "input_guardrails": [{"default.wordCount": {"minWords": 0, "maxWords": 1000}}],
    "strategy": {"mode": "conditional", "default": "b",
                 "conditions": [{"query": {"metadata.tier": "pro"}, "then": "a"}]},
    "targets": [{"name": "a", "provider": "openai", "custom_host": A},
                {"name": "b", "provider": "openai", "custom_host": B}],
}

# GUARDED, saved in the gateway file.
SAVED_GUARDED = f"""
[configs.pc-guarded]
input_guardrails = [{{ "default.wordCount" = {{ minWords = 0, maxWords = 1000 }} }}]
targets = [{{ name = "a", provider = "openai", custom_host = "{A}" }},
           {{ name = "b", provider = "openai", custom_host = "{B}" }}]

[configs.pc-guarded.strategy]
mode = "conditional"
default = "b"
conditions = [{{ query = {{ "metadata.tier" = "pro" }}, then = "a" }}]
"""


@pytest.fixture
def expansions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Return the ids of the guardrail shorthand expanded from now on, one per expansion."""
    seen: list[str] = []
    original = shorthand.shorthand_hook

    def counted(element: Any, default_id: str) -> dict[str, Any]:
        seen.append(default_id)
        return original(element, default_id)

    monkeypatch.setattr(shorthand, "shorthand_hook", counted)
    parse_config_text.cache_clear()  # a config parsed by an earlier test would be expanded already
    return seen


def route_calls(client: FlaskClient, config: str) -> list[str]:
    """Make CALLS chat calls with the config, alternating the metadata tier; return the hosts called."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with responses.RequestsMock() as mock:
        for host in (A, B):
            mock.post(f"{host}/chat/completions", json={"id": "x", "choices": []})
        for index in range(CALLS):
            tier = "pro" if index % 2 else "free"
            headers = gw_headers(x_portkey_config=config, x_portkey_metadata=json.dumps({"tier": tier}))
            res = client.post("/v1/chat/completions", json=body,
                              headers={**headers, "Authorization": f"Bearer {PROVIDER_SECRET}"})
            assert res.status_code == 200, res.get_data(as_text=True)
            assert res.get_json()["hook_results"]["before_request_hooks"][0]["verdict"] is True
        return [str(call.request.url).split("/v1/")[0] for call in mock.calls]


def public_resolver(app: Any) -> None:
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]


def test_an_inherited_guardrail_is_expanded_once_per_inline_config(app_factory: Any, expansions: list[str]) -> None:
    app = app_factory()
    public_resolver(app)
    hosts = route_calls(app.test_client(), json.dumps(GUARDED))
    assert hosts == ["https://b.example.com", "https://a.example.com"] * (CALLS // 2)  # still picked per call
    assert expansions == ["input_guardrail_0"]


def test_an_inherited_guardrail_is_expanded_once_per_saved_config(app_factory: Any, expansions: list[str],
                                                                   tmp_path: Path) -> None:
    gateway_file = tmp_path / "gateway.toml"
    gateway_file.write_text(SAVED_GUARDED)
    loaded = load_settings({}, str(gateway_file))
    app = app_factory(configs=loaded.configs)
    public_resolver(app)
    hosts = route_calls(app.test_client(), "pc-guarded")
    assert hosts == ["https://b.example.com", "https://a.example.com"] * (CALLS // 2)
    assert expansions == ["input_guardrail_0"]
