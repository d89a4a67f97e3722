"""Tests for where the checked text lives in each format, and for the mutators writing back into it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.guardrails import HookContext, HookRun, run_hooks
from app.guardrails.text import request_text, response_text

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


# --- text extraction -----------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "body", "expected"), [
    ("chatComplete", {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                                   {"role": "user", "content": "last"}, {"role": "assistant", "content": "b"}]},
     "last"),
    ("chatComplete", {"messages": [{"role": "user", "content": [{"type": "text", "text": "one"}, IMAGE,
                                                                {"type": "text", "text": "two"}]}]}, "one\ntwo"),
    ("chatComplete", {"messages": [{"role": "system", "content": "sys"}]}, None),
    ("chatComplete", {"messages": [{"role": "user", "content": [IMAGE]}]}, None),
    ("chatComplete", {"messages": "not a list"}, None),
    ("chatComplete", {"messages": [None, 3, {"role": "user", "content": "ok"}]}, "ok"),
    ("complete", {"prompt": "tell me"}, "tell me"),
    ("complete", {"prompt": ["a", "b"]}, "a\nb"),
    ("complete", {"prompt": [1, 2, 3]}, None),
    ("messages", {"system": "sys", "messages": [{"role": "user", "content": "hi"}]}, "hi"),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "42"}, {"type": "text", "text": "and?"}]}]}, "and?"),
    ("embed", {"input": "embed me"}, "embed me"),
    ("embed", {"input": ["x", "y"]}, "x\ny"),
    ("imageGenerate", {"prompt": "a cat"}, None),
    ("chatComplete", None, None),
])
def test_request_text(endpoint: str, body: Any, expected: str | None) -> None:
    assert request_text(endpoint, body) == expected


@pytest.mark.parametrize(("endpoint", "body", "expected"), [
    ("chatComplete", {"choices": [{"message": {"content": "first"}}, {"message": {"content": "second"}}]}, "first"),
    ("chatComplete", {"choices": [{"message": {"content": [{"type": "text", "text": "parts"}]}}]}, "parts"),
    ("chatComplete", {"choices": [{"message": {"content": None, "tool_calls": []}}]}, None),
    ("chatComplete", {"choices": []}, None),
    ("complete", {"choices": [{"text": "done"}]}, "done"),
    ("messages", {"content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "input": {}},
                              {"type": "text", "text": "b"}]}, "a\nb"),
    ("embed", {"data": [{"embedding": [0.1]}]}, None),
    ("messages", "not an object", None),
])
def test_response_text(endpoint: str, body: Any, expected: str | None) -> None:
    assert response_text(endpoint, body) == expected


# --- mutators ------------------------------------------------------------------------------------

def mutate(check_id: str, params: dict[str, Any], endpoint: str, request: Any, response: Any = None) -> HookRun:
    """Run one mutator hook and check the caller's bodies were not changed in place."""
    before_request, before_response = copy.deepcopy(request), copy.deepcopy(response)
    hooks = [{"id": "m", "type": "mutator", "checks": [{"id": f"default.{check_id}", "parameters": params}]}]
    event = "after" if response is not None else "before"
    run = run_hooks(hooks, HookContext(event, endpoint, request, response))
    assert request == before_request and response == before_response
    return run


CHAT = {"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "old"},
                                   {"role": "assistant", "content": "a"}, {"role": "user", "content": "question"}]}


def test_add_prefix_chat_prepends_to_the_last_user_message() -> None:
    run = mutate("addPrefix", {"prefix": "Be kind: "}, "chatComplete", CHAT)
    assert run.verdict is True and run.results[0]["checks"][0]["verdict"] is True
    assert run.request_json is not None
    assert [m["content"] for m in run.request_json["messages"]] == ["sys", "old", "a", "Be kind: question"]


def test_add_prefix_chat_parts_and_new_message() -> None:
    request = {"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "what is it?"}]}]}
    run = mutate("addPrefix", {"prefix": "P: "}, "chatComplete", request)
    assert run.request_json is not None
    assert run.request_json["messages"][0]["content"] == [IMAGE, {"type": "text", "text": "P: what is it?"}]
    run = mutate("addPrefix", {"prefix": "P", "addToExisting": False}, "chatComplete", CHAT)
    assert run.request_json is not None
    assert run.request_json["messages"][3:] == [{"role": "user", "content": "P"}, CHAT["messages"][3]]


def test_add_prefix_chat_roles() -> None:
    request = {"messages": [{"role": "user", "content": "hi"}]}
    run = mutate("addPrefix", {"prefix": "Rules.", "applyToRole": "system"}, "chatComplete", request)
    assert run.request_json is not None
    assert run.request_json["messages"] == [{"role": "system", "content": "Rules."}, {"role": "user", "content": "hi"}]
    run = mutate("addPrefix", {"prefix": "Rules. ", "applyToRole": "system"}, "chatComplete", CHAT)
    assert run.request_json is not None and run.request_json["messages"][0]["content"] == "Rules. sys"


def test_add_prefix_only_if_empty() -> None:
    run = mutate("addPrefix", {"prefix": "P", "onlyIfEmpty": True}, "chatComplete", CHAT)
    assert run.request_json is None and run.verdict is True
    request = {"messages": [{"role": "user", "content": ""}]}
    run = mutate("addPrefix", {"prefix": "P", "onlyIfEmpty": True}, "chatComplete", request)
    assert run.request_json == {"messages": [{"role": "user", "content": "P"}]}


def test_add_prefix_completions() -> None:
    run = mutate("addPrefix", {"prefix": "Q: "}, "complete", {"prompt": "why?"})
    assert run.request_json == {"prompt": "Q: why?"}
    run = mutate("addPrefix", {"prefix": "Q: "}, "complete", {"prompt": ["a", "b"]})
    assert run.request_json == {"prompt": ["Q: a", "Q: b"]}
    run = mutate("addPrefix", {"prefix": "Q: "}, "complete", {"prompt": [1, 2]})
    assert run.verdict is False and run.results[0]["checks"][0]["error"] == "the prompt has no text to prefix"


def test_add_prefix_anthropic_messages() -> None:
    request = {"model": "claude", "system": "sys", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello"}]}]}
    run = mutate("addPrefix", {"prefix": "P "}, "messages", request)
    assert run.request_json is not None
    assert run.request_json["messages"][0]["content"] == [{"type": "text", "text": "P hello"}]
    run = mutate("addPrefix", {"prefix": "S ", "applyToRole": "system"}, "messages", request)
    assert run.request_json is not None and run.request_json["system"] == "S sys"
    run = mutate("addPrefix", {"prefix": "S", "applyToRole": "system", "addToExisting": False}, "messages", request)
    assert run.request_json is not None
    assert run.request_json["system"] == [{"type": "text", "text": "S"}, {"type": "text", "text": "sys"}]
    no_system = {"messages": request["messages"]}
    run = mutate("addPrefix", {"prefix": "S", "applyToRole": "system"}, "messages", no_system)
    assert run.request_json is not None and run.request_json["system"] == "S"


def test_add_prefix_embed_is_left_alone() -> None:
    run = mutate("addPrefix", {"prefix": "P"}, "embed", {"input": "x"})
    assert run.request_json is None and run.verdict is True


def test_add_prefix_answers() -> None:
    answer = {"choices": [{"message": {"role": "assistant", "content": "one"}},
                          {"message": {"role": "assistant", "content": None, "tool_calls": []}}]}
    run = mutate("addPrefix", {"prefix": "> "}, "chatComplete", CHAT, answer)
    assert run.response_json is not None
    assert [c["message"]["content"] for c in run.response_json["choices"]] == ["> one", None]
    run = mutate("addPrefix", {"prefix": "> "}, "complete", {"prompt": "p"}, {"choices": [{"text": "t"}]})
    assert run.response_json == {"choices": [{"text": "> t"}]}
    anthropic = {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    run = mutate("addPrefix", {"prefix": "> "}, "messages", {"messages": []}, anthropic)
    assert run.response_json == {"content": [{"type": "text", "text": "> a"}, {"type": "text", "text": "b"}]}


CARD = r"\d{4}-\d{4}"


def test_regex_replace_chat_redacts_every_text() -> None:
    request = {"messages": [{"role": "system", "content": "card 1111-2222"},
                            {"role": "user", "content": [{"type": "text", "text": "mine is 3333-4444"}, IMAGE]},
                            {"role": "assistant", "content": None, "tool_calls": []},
                            {"role": "user", "content": "and 5555-6666?"}]}
    run = mutate("regexReplace", {"rule": CARD}, "chatComplete", request)
    assert run.verdict is True and run.request_json is not None
    messages = run.request_json["messages"]
    assert messages[0]["content"] == "card [REDACTED]"
    assert messages[1]["content"] == [{"type": "text", "text": "mine is [REDACTED]"}, IMAGE]
    assert messages[2] is request["messages"][2]  # untouched parts are shared, not copied
    assert messages[3]["content"] == "and [REDACTED]?"
    assert run.results[0]["checks"][0]["data"]["matches"] == 3


def test_regex_replace_other_formats() -> None:
    run = mutate("regexReplace", {"rule": CARD, "redactText": r"\1"}, "complete", {"prompt": ["1111-2222", "x"]})
    assert run.request_json == {"prompt": [r"\1", "x"]}  # redactText is literal text
    request = {"system": [{"type": "text", "text": "s 1111-2222"}],
               "messages": [{"role": "user", "content": "u 1111-2222"}]}
    run = mutate("regexReplace", {"rule": CARD}, "messages", request)
    assert run.request_json == {"system": [{"type": "text", "text": "s [REDACTED]"}],
                                "messages": [{"role": "user", "content": "u [REDACTED]"}]}
    run = mutate("regexReplace", {"rule": CARD}, "embed", {"input": ["1111-2222", "ok"]})
    assert run.request_json == {"input": ["[REDACTED]", "ok"]}


def test_regex_replace_answers() -> None:
    chat_answer = {"choices": [{"message": {"content": "a 1111-2222"}}, {"message": {"content": "b 3333-4444"}}]}
    run = mutate("regexReplace", {"rule": CARD}, "chatComplete", CHAT, chat_answer)
    assert run.response_json is not None
    assert [c["message"]["content"] for c in run.response_json["choices"]] == ["a [REDACTED]", "b [REDACTED]"]
    run = mutate("regexReplace", {"rule": CARD}, "complete", {"prompt": "p"}, {"choices": [{"text": "1111-2222"}]})
    assert run.response_json == {"choices": [{"text": "[REDACTED]"}]}
    anthropic = {"content": [{"type": "text", "text": "x 1111-2222"}, {"type": "tool_use", "input": {}}]}
    run = mutate("regexReplace", {"rule": CARD}, "messages", {"messages": []}, anthropic)
    assert run.response_json == {"content": [{"type": "text", "text": "x [REDACTED]"}, {"type": "tool_use",
                                                                                        "input": {}}]}


def test_regex_replace_fail_on_detection() -> None:
    run = mutate("regexReplace", {"rule": CARD, "failOnDetection": True}, "chatComplete", CHAT)
    assert run.verdict is True and run.request_json is None  # nothing matched
    request = {"messages": [{"role": "user", "content": "1111-2222"}]}
    run = mutate("regexReplace", {"rule": CARD, "failOnDetection": True}, "chatComplete", request)
    assert run.verdict is False and run.request_json is not None
    assert run.request_json["messages"][0]["content"] == "[REDACTED]"


def test_regex_replace_refuses_huge_texts() -> None:
    request = {"messages": [{"role": "user", "content": "a" * (1024 * 1024 + 1)}]}
    run = mutate("regexReplace", {"rule": "b"}, "chatComplete", request)
    assert run.verdict is False and "over 1 MB" in run.results[0]["checks"][0]["error"]
    assert run.request_json is None


def test_mutators_chain_across_hooks_and_checks_see_the_change() -> None:
    hooks = [
        {"id": "redact", "type": "mutator", "checks": [{"id": "default.regexReplace", "parameters": {"rule": CARD}}]},
        {"id": "check", "type": "guardrail", "checks": [
            {"id": "default.regexMatch", "parameters": {"rule": CARD, "not": True}}]},
        {"id": "prefix", "type": "mutator", "checks": [{"id": "default.addPrefix", "parameters": {"prefix": "P: "}}]},
    ]
    request = {"messages": [{"role": "user", "content": "1111-2222"}]}
    run = run_hooks(hooks, HookContext("before", "chatComplete", request))
    assert run.verdict is True
    assert run.request_json == {"messages": [{"role": "user", "content": "P: [REDACTED]"}]}
