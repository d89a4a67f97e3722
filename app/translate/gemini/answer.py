"""Chat answers: candidates, finish reasons and usage of a GenerateContentResponse in OpenAI's terms."""

from __future__ import annotations

from typing import Any

from app.jsonwire import compact
from app.translate import shape
from app.translate.gemini.signature import _call_id

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})


def _finish(reason: Any, called: bool) -> str | None:
    if reason is None:
        return None
    if reason in _FILTERED:
        return shape.CONTENT_FILTER
    if reason == "MAX_TOKENS":
        return shape.LENGTH
    # STOP, and reasons OpenAI has no name for (OTHER, MALFORMED_FUNCTION_CALL, ...), end the turn normally.
    return shape.TOOL_CALLS if called else shape.STOP


def _candidate_output(candidate: dict[str, Any]) -> tuple[str, list[tuple[str, str, str]]]:
    """Return a candidate's text (thoughts left out) and its calls as (id, name, arguments)."""
    content = candidate.get("content")
    content = content if isinstance(content, dict) else {}
    text = []
    calls = []
    for part in content.get("parts") or []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            text.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            calls.append((_call_id(part.get("thoughtSignature")), str(call.get("name") or ""),
                          compact(call.get("args") or {}, ensure_ascii=False)))
    return "".join(text), calls


def _indices(candidates: list[dict[str, Any]]) -> list[int]:
    """Return each candidate's index: JSON leaves out a zero index, so a missing one is 0 unless 0 is taken."""
    given = [c.get("index") if isinstance(c.get("index"), int) else None for c in candidates]
    if all(index is None for index in given):
        return list(range(len(candidates)))
    return [index if index is not None else (position if 0 in given else 0)
            for position, index in enumerate(given)]


def _choice(index: int, message: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def _usage(meta: Any) -> dict[str, Any] | None:
    if not isinstance(meta, dict):
        return None
    prompt, candidates = meta.get("promptTokenCount"), meta.get("candidatesTokenCount")
    thoughts = meta.get("thoughtsTokenCount")
    if prompt is None and candidates is None and thoughts is None:
        return None
    details: dict[str, Any] = {}
    if meta.get("cachedContentTokenCount") is not None:
        details["cached_tokens"] = meta["cachedContentTokenCount"]
    if thoughts:
        details["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    # Tokens of tool-use prompts are billed as input; thoughts are billed as output (OpenAI counts reasoning there).
    return shape.usage((prompt or 0) + (meta.get("toolUsePromptTokenCount") or 0),
                       (candidates or 0) + (thoughts or 0), **details)


def _model_of(native: dict[str, Any]) -> str | None:
    version = native.get("modelVersion")
    return version if isinstance(version, str) and version else None
