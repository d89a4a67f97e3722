"""Unified chat answers as Anthropic Messages answers: the message, its stop reason, usage and errors."""

from __future__ import annotations

import json
import logging
from typing import Any

from app.translate.base import CallFacts

log = logging.getLogger(__name__)

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}
# The error types Anthropic's API and SDKs know; a unified type outside them is an api_error.
_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "billing_error", "permission_error",
                          "not_found_error", "request_too_large", "rate_limit_error", "timeout_error", "api_error",
                          "overloaded_error"})
_ERROR_ALIASES = {"server_error": "api_error", "insufficient_quota": "rate_limit_error"}


def as_dict(value: Any) -> dict[str, Any]:
    """Return the value when it is a JSON object, else an empty one (what is missing reads as absent)."""
    return value if isinstance(value, dict) else {}


def message_id(unified_id: Any, facts: CallFacts) -> str:
    """Return a `msg_` id derived from the unified answer's id (the call's own id when it has none)."""
    text = unified_id if isinstance(unified_id, str) and unified_id else facts.id
    if text.startswith("msg_"):
        return text
    return "msg_" + text.removeprefix("chatcmpl-")


def stop_reason(choice: dict[str, Any]) -> tuple[str, str | None]:
    """Return Anthropic's (stop_reason, stop_sequence) for a unified choice."""
    reason = choice.get("finish_reason")
    if reason == "stop":
        # OpenAI does not say which stop string matched; vLLM-style servers name it in `stop_reason`.
        matched = choice.get("stop_reason") or choice.get("stop_sequence")
        if isinstance(matched, str) and matched:
            return "stop_sequence", matched
    return _STOP_REASONS.get(reason if isinstance(reason, str) else "", "end_turn"), None


def usage(unified: Any) -> dict[str, Any]:
    """Return Anthropic's usage for a unified one; its input_tokens leave out the cached tokens, as Anthropic's do."""
    if not isinstance(unified, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    details = unified.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    written = unified.get("cache_creation_input_tokens")
    prompt = _int(unified.get("prompt_tokens"))
    result: dict[str, Any] = {"input_tokens": max(prompt - _int(cached) - _int(written), 0),
                              "output_tokens": _int(unified.get("completion_tokens"))}
    if isinstance(written, int):
        result["cache_creation_input_tokens"] = written
    if isinstance(cached, int):
        result["cache_read_input_tokens"] = cached
    return result


def tool_input(arguments: Any) -> dict[str, Any]:
    """Return a tool call's arguments as the object Anthropic's `input` is ({} when they are not one)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("/v1/messages: a tool call's arguments were not a JSON object; sent as {}")
        return {}
    return value


def message(unified: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
    """Return the Anthropic message for a unified `chat.completion`."""
    choices = unified.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    said = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = _text(said.get("content")) or (said.get("refusal") if isinstance(said.get("refusal"), str) else "")
    if text:
        content.append({"type": "text", "text": text})
    for call in said.get("tool_calls") or []:
        function = as_dict(as_dict(call).get("function"))
        content.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
                        "input": tool_input(function.get("arguments"))})
    reason, sequence = stop_reason(choice)
    return {"id": message_id(unified.get("id"), facts), "type": "message", "role": "assistant",
            "model": unified.get("model") or facts.model or "", "content": content, "stop_reason": reason,
            "stop_sequence": sequence, "usage": usage(unified.get("usage"))}


def error_body(error: dict[str, Any]) -> dict[str, Any]:
    """Return Anthropic's error body for a unified error (the whole body or its `error` object)."""
    inner = as_dict(error.get("error")) or error
    return {"type": "error", "error": {"type": error_type(inner), "message": str(inner.get("message") or "")}}


def error_type(error: dict[str, Any]) -> str:
    """Return the Anthropic error type for a unified error; the provider's own name wins when Anthropic knows it."""
    for name in (error.get("code"), error.get("type")):
        if isinstance(name, str):
            name = _ERROR_ALIASES.get(name, name)
            if name in _ERROR_TYPES:
                return name
    return "api_error"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
