"""The OpenAI shapes the unified chat route answers with: completions, chunks, usage, finish reasons."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from app.errors import BadRequest
from app.providers.registry import odd_character
from app.translate.base import CallFacts

# The finish reasons a unified answer may carry (docs/providers.md, Translation).
STOP = "stop"
LENGTH = "length"
TOOL_CALLS = "tool_calls"
CONTENT_FILTER = "content_filter"


def usage(prompt: int | None, completion: int | None, **details: Any) -> dict[str, Any] | None:
    """Return an OpenAI usage object, or None when the provider reported no counts."""
    if prompt is None and completion is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    result: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
    cached = details.get("cached_tokens")
    if cached is not None:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    for name, value in details.items():
        if name != "cached_tokens" and value is not None:
            result[name] = value  # provider extras (cache_creation_input_tokens, ...)
    return result


def completion(facts: CallFacts, message: dict[str, Any], finish_reason: str | None,
               usage_: dict[str, Any] | None, *, id_: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Return an OpenAI `chat.completion` with one choice."""
    result: dict[str, Any] = {
        "id": id_ or facts.id,
        "object": "chat.completion",
        "created": facts.created,
        "model": model or facts.model or "",
        "provider": facts.provider,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        result["usage"] = usage_
    return result


def message(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return an assistant message; `tool_calls` only when there are some."""
    result: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        result["tool_calls"] = tool_calls
    return result


def tool_call(call_id: str, name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    """Return one OpenAI tool call (with `index` in streamed deltas)."""
    result: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if index is not None:
        result = {"index": index, **result}
    return result


def chunk(facts: CallFacts, delta: dict[str, Any], finish_reason: str | None = None, *,
          id_: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Return one OpenAI `chat.completion.chunk` with one choice."""
    return {
        "id": id_ or facts.id,
        "object": "chat.completion.chunk",
        "created": facts.created,
        "model": model or facts.model or "",
        "provider": facts.provider,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(facts: CallFacts, usage_: dict[str, Any], *, id_: str | None = None,
                model: str | None = None) -> dict[str, Any]:
    """Return the last chunk of a stream: no choices, the usage (as OpenAI sends with include_usage)."""
    return {"id": id_ or facts.id, "object": "chat.completion.chunk", "created": facts.created,
            "model": model or facts.model or "", "provider": facts.provider, "choices": [], "usage": usage_}


def embeddings(facts: CallFacts, vectors: list[list[float]], prompt_tokens: int | None,
               model: str | None = None) -> dict[str, Any]:
    """Return an OpenAI embeddings list."""
    result: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model or facts.model or "",
        "provider": facts.provider,
    }
    if prompt_tokens is not None:
        result["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return result


def text_of(content: Any) -> str:
    """Return the text of an OpenAI message content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return str(content)


def max_tokens(body: dict[str, Any]) -> int | None:
    """Return the answer's token limit: max_completion_tokens, else max_tokens (the newer name wins, as at OpenAI)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequest(f"{name} must be a non-negative integer")
            return value
    return None


def stop_sequences(body: dict[str, Any]) -> list[str]:
    """Return `stop` as a list of strings (it may be one string)."""
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
        raise BadRequest("stop must be a string or a list of strings")
    return stops


def json_schema_format(response_format: Any, provider: str) -> dict[str, Any] | None:
    """Return response_format's json_schema (its `schema` a JSON object), None for text or none; else a 400.

    For providers that constrain output to a given schema only: "any JSON" (json_object) has no equivalent
    there, and dropping it would hand prose to a client that parses JSON.
    """
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    if kind is None or kind == "text":
        return None
    if kind == "json_object":
        raise BadRequest(f"response_format json_object is not supported by {provider}: it constrains output to a "
                         'JSON schema only; send {"type": "json_schema", "json_schema": {"name": ..., "schema": '
                         "{...}}} instead")
    if kind != "json_schema":
        raise BadRequest('response_format.type must be "text", "json_object" or "json_schema"')
    definition = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if not isinstance(definition, dict) or not isinstance(definition.get("schema"), dict):
        raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
    return definition


def path_segment(value: str, name: str, safe: str = "") -> str:
    """Return value percent-encoded as one segment of an upstream URL path; refuse what cannot be one.

    Encoding keeps `/`, `?` and `#` from adding to the path; a dot segment would climb it (clients and
    servers resolve `..` before routing), and a control character or lone surrogate has no place in a URL
    (docs/security.md).
    """
    problem = odd_character(value, in_header=False)
    if problem is None and value in (".", ".."):
        problem = "is a dot segment, which would climb the upstream URL path"
    if problem is not None:
        raise BadRequest(f"Invalid {name}: it cannot be part of the upstream URL", errors=[f"{name}: {problem}"])
    return quote(value, safe=safe)
