"""Messages API answers to OpenAI `chat.completion`s: finish reasons and usage too."""

from __future__ import annotations

import json
from typing import Any

from app.translate import shape
from app.translate.base import CallFacts

_FINISH = {"end_turn": shape.STOP, "stop_sequence": shape.STOP, "pause_turn": shape.STOP,
           "max_tokens": shape.LENGTH, "model_context_window_exceeded": shape.LENGTH,
           "tool_use": shape.TOOL_CALLS, "refusal": shape.CONTENT_FILTER}
_PLAIN = ("text", "tool_use")  # the blocks the OpenAI shape has a place for; any other is an extra


def completion(native: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
    """Return the OpenAI `chat.completion` for a Messages API answer."""
    blocks = [block for block in native.get("content") or [] if isinstance(block, dict)]
    texts = [block.get("text") or "" for block in blocks if block.get("type") == "text"]
    calls = [shape.tool_call(str(block.get("id", "")), str(block.get("name", "")), _arguments(block.get("input")))
             for block in blocks if block.get("type") == "tool_use"]
    message = shape.message("".join(texts) if texts or not calls else None, calls)
    if not facts.strict and any(block.get("type") not in _PLAIN for block in blocks):
        # Thinking (and other extras) ride along in Anthropic's order, so a client can hand them back.
        message["content_blocks"] = [block for block in blocks if block.get("type") != "tool_use"]
    return shape.completion(facts, message, finish_reason(native.get("stop_reason")), usage(native.get("usage")),
                            id_=_text(native.get("id")), model=_text(native.get("model")))


def finish_reason(stop_reason: Any) -> str | None:
    """Return the OpenAI finish reason for an Anthropic stop reason."""
    if stop_reason is None:
        return None
    return _FINISH.get(str(stop_reason), shape.STOP)


def usage(raw: Any) -> dict[str, Any] | None:
    """Return OpenAI usage for Anthropic's: prompt_tokens counts cache reads and writes too."""
    if not isinstance(raw, dict):
        return None
    read, written = _count(raw.get("cache_read_input_tokens")), _count(raw.get("cache_creation_input_tokens"))
    inputs, outputs = _count(raw.get("input_tokens")), _count(raw.get("output_tokens"))
    if inputs is None and outputs is None:
        return None
    details = raw.get("output_tokens_details")
    thinking = _count(details.get("thinking_tokens")) if isinstance(details, dict) else None
    return shape.usage((inputs or 0) + (read or 0) + (written or 0), outputs, cached_tokens=read,
                       cache_creation_input_tokens=written,
                       completion_tokens_details=None if thinking is None else {"reasoning_tokens": thinking})


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)
