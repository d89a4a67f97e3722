"""The mutator checks: `addPrefix` and `regexReplace`, written back into the right place of each format.

Before the request they change the request (OpenAI chat, completions, embeddings, Anthropic messages),
after it the answer. They never change a body in place: they return a new body sharing what did not change.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from app.guardrails.context import CheckError, CheckInput, CheckOutcome
from app.guardrails.params import ROLES as _ROLES
from app.guardrails.params import (
    CheckSpec,
    Param,
    Problem,
    any_text,
    compile_rule,
    flag,
    one_of,
    rule,
    text,
)
from app.guardrails.text import (
    content_text,
    is_text_part,
    last_message,
    map_request_texts,
    map_response_texts,
    map_strings,
)
from app.textmatch import OutOfTime

# Each search is linear (app.textmatch), but a body is searched once per match: bound the text and the time.
MAX_REPLACE_TEXT = 1024 * 1024
REPLACE_BUDGET_S = 2.0  # for all the texts of one regexReplace run; legitimate redaction takes milliseconds
_FIRST_ROLES = ("system", "developer")


# --- addPrefix ---------------------------------------------------------------------------------

def add_prefix(inp: CheckInput, params: Mapping[str, Any]) -> CheckOutcome:
    """Prepend `prefix` to the request's message of `applyToRole` (before) or to the answer's text (after)."""
    prefix = params["prefix"]
    if inp.event == "after":
        body = _prefix_answer(inp.endpoint, inp.response_json, prefix)
        return CheckOutcome(True, _prefix_data(body is not None, "the answer"), response_json=body)
    if inp.endpoint == "embed":
        return CheckOutcome(True, {"explanation": "addPrefix does not apply to embeddings", "transformed": False})
    if inp.endpoint == "complete":
        prompt, changed = map_strings((inp.request_json or {}).get("prompt"), lambda value: prefix + value)
        if not changed and not isinstance(prompt, str):
            raise CheckError("the prompt has no text to prefix")
        body = {**(inp.request_json or {}), "prompt": prompt}
        return CheckOutcome(True, _prefix_data(True, "the prompt"), request_json=body)
    return _prefix_messages(inp, params)


def _prefix_data(changed: bool, where: str) -> dict[str, Any]:
    return {"explanation": f"prefix added to {where}" if changed else f"no text in {where} to prefix",
            "transformed": changed}


def _prefix_messages(inp: CheckInput, params: Mapping[str, Any]) -> CheckOutcome:
    """Prefix the last message of the role (chat, Anthropic); Anthropic's system prompt is its `system` field."""
    body = inp.request_json
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        raise CheckError("the request has no messages")
    role = params["applyToRole"]
    if inp.endpoint == "messages" and role in _FIRST_ROLES:
        return _prefix_system(body, params)  # Anthropic keeps system (and developer) text out of messages
    messages = list(body["messages"])
    found = last_message(messages, role)
    if found is None:
        added = {"role": role, "content": params["prefix"]}
        # A system prompt leads the conversation; other roles go last, where the model reads them next.
        messages.insert(0 if role in _FIRST_ROLES else len(messages), added)
        return _prefixed(body, messages, f"added a {role} message")
    index, message = found
    if params["onlyIfEmpty"] and (content_text(message.get("content")) or "").strip():
        return CheckOutcome(True, {"explanation": f"the {role} message is not empty; left as it is",
                                   "transformed": False})
    if params["addToExisting"]:
        messages[index] = {**message, "content": prefixed_content(message.get("content"), params["prefix"])}
        return _prefixed(body, messages, f"prefix added to the last {role} message")
    messages.insert(index, {"role": role, "content": params["prefix"]})
    return _prefixed(body, messages, f"inserted a {role} message before the last one")


def _prefixed(body: Mapping[str, Any], messages: list[Any], explanation: str) -> CheckOutcome:
    return CheckOutcome(True, {"explanation": explanation, "transformed": True},
                   request_json={**body, "messages": messages})


def _prefix_system(body: Mapping[str, Any], params: Mapping[str, Any]) -> CheckOutcome:
    """Prefix (or add) the top-level `system` of an Anthropic request."""
    prefix, system = params["prefix"], body.get("system")
    if params["onlyIfEmpty"] and (content_text(system) or "").strip():
        return CheckOutcome(True, {"explanation": "the system prompt is not empty; left as it is",
                                   "transformed": False})
    if system in (None, "", []):
        new_system: Any = prefix
    elif params["addToExisting"]:
        new_system = prefixed_content(system, prefix)
    else:
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        new_system = [{"type": "text", "text": prefix}, *blocks]
    return CheckOutcome(True, {"explanation": "prefix added to the system prompt", "transformed": True},
                   request_json={**body, "system": new_system})


def prefixed_content(content: Any, prefix: str) -> Any:
    """Return a content with `prefix` before its text: a string, or parts whose first text part is prefixed."""
    if isinstance(content, str):
        return prefix + content
    if isinstance(content, list):
        for index, part in enumerate(content):
            if is_text_part(part):
                return [*content[:index], {**part, "text": prefix + part["text"]}, *content[index + 1:]]
        return [{"type": "text", "text": prefix}, *content]
    return prefix


def _prefix_answer(endpoint: str, body: Any, prefix: str) -> dict[str, Any] | None:
    """Prefix the text of every choice (OpenAI formats) or the first text block (Anthropic); None when no text."""
    if not isinstance(body, Mapping):
        return None
    if endpoint == "messages":
        content = body.get("content")
        return {**body, "content": prefixed_content(content, prefix)} if isinstance(content, list) else None
    choices = body.get("choices")
    if not isinstance(choices, list):
        return None
    new_choices = [_prefix_choice(choice, endpoint, prefix) for choice in choices]
    return {**body, "choices": new_choices} if new_choices != choices else None


def _prefix_choice(choice: Any, endpoint: str, prefix: str) -> Any:
    """Prefix one choice's text (completions) or message content (chat); a choice without text is kept."""
    if not isinstance(choice, Mapping):
        return choice
    if endpoint == "complete":
        return {**choice, "text": prefix + choice["text"]} if isinstance(choice.get("text"), str) else choice
    message = choice.get("message")
    if not isinstance(message, Mapping) or not isinstance(message.get("content"), str | list):
        return choice
    return {**choice, "message": {**message, "content": prefixed_content(message["content"], prefix)}}


# --- regexReplace ------------------------------------------------------------------------------

def regex_replace(inp: CheckInput, params: Mapping[str, Any]) -> CheckOutcome:
    """Replace every match of `rule` in every text with `redactText`; fail when it matched and failOnDetection."""
    pattern, redact = compile_rule(params["rule"]), params["redactText"]
    deadline = time.monotonic() + REPLACE_BUDGET_S
    matches = 0

    def replace(value: str) -> str:
        nonlocal matches
        if len(value) > MAX_REPLACE_TEXT:
            raise CheckError("a text is over 1 MB; regexReplace refuses to scan it")
        try:
            new, found = pattern.replace_all(value, redact, deadline)  # redactText is literal text
        except OutOfTime as err:
            raise CheckError(f"regexReplace stopped after {REPLACE_BUDGET_S:g} s, {matches + err.matches} "
                             "matches in: the rule costs too much on this text") from None
        matches += found
        return new

    if inp.event == "after":
        outcome = CheckOutcome(True, {}, response_json=map_response_texts(inp.endpoint, inp.response_json, replace))
    else:
        outcome = CheckOutcome(True, {}, request_json=map_request_texts(inp.endpoint, inp.request_json, replace))
    outcome.verdict = not (params["failOnDetection"] and matches)
    outcome.data = {"matches": matches, "transformed": matches > 0,
                    "explanation": f"{matches} matches replaced" if matches else "the pattern did not match"}
    return outcome


def _replace_cross(params: Mapping[str, Any]) -> list[Problem]:
    # A rule that matches the empty string would insert redactText between every character.
    if compile_rule(params["rule"]).matches_empty():
        return [(("rule",), "must not match the empty string")]
    return []


SPECS = (
    CheckSpec("addPrefix", add_prefix, {
        "prefix": Param(text, required=True),
        "applyToRole": Param(one_of(*_ROLES), default="user"),
        "addToExisting": Param(flag, default=True),
        "onlyIfEmpty": Param(flag, default=False),
    }, invertible=False),
    CheckSpec("regexReplace", regex_replace, {
        "rule": Param(rule, required=True),
        "redactText": Param(any_text, default="[REDACTED]"),
        "failOnDetection": Param(flag, default=False),
    }, cross=_replace_cross, invertible=False),
)
