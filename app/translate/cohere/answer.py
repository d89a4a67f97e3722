"""Cohere /v2/chat answers to OpenAI chat.completions: finish reasons, usage and logprobs too."""

from __future__ import annotations

from typing import Any

from app.errors import UpstreamUnreachable
from app.translate import shape
from app.translate.base import CallFacts

# Cohere finish reasons → unified ones. ERROR is not here: it is a failure, not an end (see _failed).
FINISH = {
    "COMPLETE": shape.STOP, "STOP_SEQUENCE": shape.STOP, "MAX_TOKENS": shape.LENGTH,
    "TIMEOUT": shape.LENGTH,  # cut short by Cohere's time limit: an incomplete answer, like a length stop
    "TOOL_CALL": shape.TOOL_CALLS, "ERROR_TOXIC": shape.CONTENT_FILTER, "ERROR_LIMIT": shape.LENGTH,
}


def chat_completion(native: Any, facts: CallFacts) -> dict[str, Any]:
    """Return the OpenAI chat.completion for a /v2/chat answer."""
    if not isinstance(native, dict) or not isinstance(native.get("message"), dict):
        raise UpstreamUnreachable("cohere answered with JSON that is not a chat response")
    finish = native.get("finish_reason")
    if finish == "ERROR":
        raise UpstreamUnreachable("cohere error: the generation failed (finish_reason ERROR)")
    message = native["message"]
    parts = message.get("content") if isinstance(message.get("content"), list) else []
    text = (_str(message.get("tool_plan")) or "") + "".join(
        _str(part.get("text")) or "" for part in parts if isinstance(part, dict) and part.get("type") == "text")
    calls = [shape.tool_call(_str(call.get("id")) or f"call_{i}", _str(_fn(call).get("name")) or "",
                             _str(_fn(call).get("arguments")) or "{}")
             for i, call in enumerate(message.get("tool_calls") or []) if isinstance(call, dict)]
    unified = shape.message(text or (None if calls else ""), calls)
    if not facts.strict:
        thinking = "".join(_str(part.get("thinking")) or "" for part in parts
                           if isinstance(part, dict) and part.get("type") == "thinking")
        if thinking:
            unified["reasoning_content"] = thinking
        if message.get("citations"):
            unified["citations"] = message["citations"]
    result = shape.completion(facts, unified, FINISH.get(str(finish), shape.STOP), usage(native.get("usage")))
    if isinstance(native.get("logprobs"), list):
        result["choices"][0]["logprobs"] = {"content": logprobs(native["logprobs"]), "refusal": None}
    return result


def usage(raw: Any) -> dict[str, Any] | None:
    """Return the unified usage of Cohere's: billed units first (what Cohere charges), raw tokens otherwise."""
    if not isinstance(raw, dict):
        return None
    billed = _dig(raw, "billed_units")
    tokens = _dig(raw, "tokens")
    prompt = _count(billed.get("input_tokens"))
    prompt = _count(tokens.get("input_tokens")) if prompt is None else prompt
    completion = _count(billed.get("output_tokens"))
    completion = _count(tokens.get("output_tokens")) if completion is None else completion
    return shape.usage(prompt, completion, cached_tokens=_count(raw.get("cached_tokens")))


def logprobs(items: list[Any]) -> list[dict[str, Any]]:
    """Return OpenAI logprob entries for Cohere's: one per text piece, its tokens' logprobs summed."""
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text = _str(item.get("text")) or ""
        values = [v for v in item.get("logprobs") or [] if _number(v)]
        entries.append({"token": text, "logprob": sum(values), "bytes": list(text.encode()), "top_logprobs": []})
    return entries


def _dig(value: Any, *keys: str) -> dict[str, Any]:
    """Return the object at this path, or an empty one when any step is missing."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def _fn(call: Any) -> dict[str, Any]:
    return _dig(call, "function")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> int | None:
    """Return a token count (Cohere sends some as JSON floats)."""
    return int(value) if _number(value) else None
