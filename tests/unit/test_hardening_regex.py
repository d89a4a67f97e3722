"""Regexes from clients and configs run in linear time; what needs backtracking is a 400 naming the field."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.config.models import Condition, Strategy, Target
from app.guardrails import HookContext, run_hooks
from app.guardrails import mutators as mutators_module
from app.guardrails.checks import count_sentences
from app.pipeline.conditions import pick_conditional
from tests.conftest import GATEWAY_KEY

EVIL = "(a+)+$"  # exponential on Python's re: 30 characters held a worker for two minutes
VICTIM = "a" * 10_000 + "!"
FAST_S = 1.0  # before the fix these calls did not finish at all


def elapsed(call: Any) -> tuple[Any, float]:
    """Return what `call()` returns and how long it took."""
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def check(check_id: str, params: dict[str, Any], text: str, kind: str = "guardrail") -> dict[str, Any]:
    """Run one check in one before-request hook over a chat message; return its hook_results entry."""
    hooks = [{"id": "h", "type": kind, "checks": [{"id": f"default.{check_id}", "parameters": params}]}]
    request = {"model": "m", "messages": [{"role": "user", "content": text}]}
    entry: dict[str, Any] = run_hooks(hooks, HookContext("before", "chatComplete", request)).results[0]["checks"][0]
    return entry


# --- the pathological pattern answers at once ------------------------------------------------

def test_conditional_routing_regex_on_10_kb_answers_at_once() -> None:
    strategy = Strategy(mode="conditional", default="plain",
                        conditions=(Condition(query={"metadata.u": {"$regex": EVIL}}, then="evil"),))
    targets = [Target(name="evil"), Target(name="plain")]
    chosen, took = elapsed(lambda: pick_conditional(strategy, targets, {"metadata": {"u": VICTIM}}))
    assert chosen == 1
    assert took < FAST_S


def test_regex_match_check_on_10_kb_answers_at_once() -> None:
    entry, took = elapsed(lambda: check("regexMatch", {"rule": EVIL}, VICTIM))
    assert entry["verdict"] is False and "error" not in entry, entry
    assert took < FAST_S


def test_regex_replace_mutator_on_10_kb_answers_at_once() -> None:
    entry, took = elapsed(lambda: check("regexReplace", {"rule": EVIL}, VICTIM, kind="mutator"))
    assert entry["verdict"] is True and entry["data"]["matches"] == 0, entry
    assert took < FAST_S
    entry, took = elapsed(lambda: check("regexReplace", {"rule": EVIL}, "a" * 10_000, kind="mutator"))
    assert entry["data"]["matches"] == 1, entry
    assert took < FAST_S


def test_regex_replace_that_would_run_for_minutes_stops_at_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each search is linear, but this rule costs a scan to the end for every one-letter match (quadratic).
    monkeypatch.setattr(mutators_module, "REPLACE_BUDGET_S", 0.2)
    entry, took = elapsed(lambda: check("regexReplace", {"rule": r"\w+x|\w"}, "a" * 300_000, kind="mutator"))
    assert entry["verdict"] is False
    assert "regexReplace stopped after 0.2 s" in entry["error"]
    assert took < 2.0


def test_sentence_count_on_a_long_run_of_dots_answers_at_once() -> None:
    # The gateway's own sentence splitter backtracked over such a run: quadratic (10,000 dots took seconds).
    count, took = elapsed(lambda: count_sentences("." * 30_000 + "x"))
    assert count == 1
    assert took < FAST_S


# --- what needs backtracking is refused, naming the field -------------------------------------

REFUSED = [(r"(a)\1", "backreferences"), ("(?=a)", "lookahead"), (r"(?<n>\d)-\k<n>", "backreferences"),
           ("(?<!a)b", "lookbehind")]


def post(client: FlaskClient, config: dict[str, Any], metadata: dict[str, Any] | None = None) -> Any:
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config),
               "x-portkey-metadata": json.dumps(metadata or {})}
    return client.post("/v1/chat/completions", headers=headers,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
def test_conditional_regex_needing_backtracking_is_400_naming_the_field(client: FlaskClient, pattern: str,
                                                                        reason: str) -> None:
    config = {"strategy": {"mode": "conditional", "default": "a",
                           "conditions": [{"query": {"metadata.u": {"$regex": pattern}}, "then": "a"}]},
              "targets": [{"name": "a", "provider": "openai", "api_key": "sk-x",
                           "custom_host": "http://127.0.0.1:9/v1"}]}
    res = post(client, config, {"u": "aa"})
    assert res.status_code == 400
    message = res.get_json()["message"]
    assert message.startswith("Invalid regex in the query router: metadata.u: ")
    assert reason in message and "linear-time" in message


@pytest.mark.parametrize(("pattern", "reason"), REFUSED)
def test_guardrail_rule_needing_backtracking_is_400_naming_the_field(client: FlaskClient, pattern: str,
                                                                     reason: str) -> None:
    config = {"provider": "openai", "api_key": "sk-x",
              "input_guardrails": [{"default.regexMatch": {"rule": pattern}}],
              "before_request_hooks": [{"id": "m", "type": "mutator", "checks": [
                  {"id": "default.regexReplace", "parameters": {"rule": pattern}}]}]}
    res = post(client, config)
    assert res.status_code == 400
    errors = res.get_json()["errors"]
    for where in ("input_guardrails,0,default.regexMatch,rule", "before_request_hooks,0,checks,0,parameters,rule"):
        assert any(e.startswith(f"path: {where}, message: ") and reason in e for e in errors), errors


# --- what clients write today keeps working ----------------------------------------------------

@pytest.mark.parametrize(("rule", "text", "found"), [
    (r"(?i)(?P<word>HELLO)\s\d+", "say hello 42", "hello 42"),  # inline flag, Python named group, \d \s
    (r"(?<area>\d{3})-\d{4}", "call 555-1234", "555-1234"),  # JavaScript named group
    (r"[(?P<x>]+", "a(?P<x>", "(?P<x>"),  # a class holding group syntax stays a class
    (r"\bcat\b", "a cat here", "cat"),
    ("ü+", "grüüün", "üüü"),
])
def test_usual_syntax_still_matches(rule: str, text: str, found: str) -> None:
    entry = check("regexMatch", {"rule": rule}, text)
    assert entry["verdict"] is True and entry["data"]["matchedText"] == found, entry


def redact(rule: str, prompt: str, redact_text: str) -> Any:
    """Run regexReplace over a completions prompt; return the prompt it sends."""
    hooks = [{"id": "m", "type": "mutator", "checks": [
        {"id": "default.regexReplace", "parameters": {"rule": rule, "redactText": redact_text}}]}]
    run = run_hooks(hooks, HookContext("before", "complete", {"prompt": prompt}))
    return (run.request_json or {}).get("prompt")


def test_redaction_keeps_literal_text_lone_surrogates_and_characters_whole() -> None:
    assert redact(r"\d{4}", "pin 1234 \ud800 ok 5678", r"\1 [X]") == "pin \\1 [X] \ud800 ok \\1 [X]"
    # \b is ASCII, as in JavaScript: é is no word character, and no mark lands between its two bytes.
    assert redact(r"\b", "ab é cd", "|") == "|ab| é |cd|"
