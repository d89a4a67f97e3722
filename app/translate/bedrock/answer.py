"""Chat answers: a Converse answer's content blocks, stop reason and usage in OpenAI's terms."""

from __future__ import annotations

from typing import Any

from app.jsonwire import compact
from app.translate import shape
from app.translate.base import CallFacts

# Converse stop reasons → OpenAI finish reasons (anything else, e.g. malformed_model_output, is "stop").
FINISH = {
    "end_turn": shape.STOP, "stop_sequence": shape.STOP, "max_tokens": shape.LENGTH,
    "model_context_window_exceeded": shape.LENGTH, "tool_use": shape.TOOL_CALLS,
    "guardrail_intervened": shape.CONTENT_FILTER, "content_filtered": shape.CONTENT_FILTER,
}


def completion(native: Any, facts: CallFacts) -> dict[str, Any]:
    """Return the OpenAI chat.completion for a Converse answer."""
    native = native if isinstance(native, dict) else {}
    output = native.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append(shape.tool_call(str(use.get("toolUseId") or ""), str(use.get("name") or ""),
                                         _arguments(use.get("input"))))
        elif isinstance(block.get("reasoningContent"), dict):
            text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(text, str):
                reasoning.append(text)
    content = "".join(texts) if texts else (None if calls else "")
    result = shape.message(content, calls)
    if reasoning and not facts.strict:
        result["reasoning_content"] = "".join(reasoning)  # an extra: OpenAI has no reasoning field
    finish = FINISH.get(str(native.get("stopReason")), shape.STOP)
    return shape.completion(facts, result, finish, converse_usage(native.get("usage")))


def _arguments(value: Any) -> str:
    return compact({} if value is None else value, ensure_ascii=False)


def converse_usage(usage: Any) -> dict[str, Any] | None:
    """Return the OpenAI usage of a Converse usage object.

    prompt_tokens counts cache reads and writes too (as OpenAI's does): Converse's inputTokens leaves them out.
    """
    if not isinstance(usage, dict):
        return None
    read = usage.get("cacheReadInputTokens")
    write = usage.get("cacheWriteInputTokens")
    prompt = usage.get("inputTokens")
    if prompt is not None:
        prompt += (read or 0) + (write or 0)
    return shape.usage(prompt, usage.get("outputTokens"), cached_tokens=read, cache_creation_input_tokens=write)
