"""OpenAI chat bodies to Cohere /v2/chat bodies: the request half of the chat adapter."""

from __future__ import annotations

import logging
from typing import Any

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import NativeRequest
from app.translate.cohere.answer import _number

log = logging.getLogger(__package__)  # the package's name, as before the split into modules

CHAT_PATH = "/v2/chat"
# Cohere's own chat fields, sent on as they are when a client adds them to an OpenAI body.
_CHAT_NATIVE = ("documents", "citation_options", "safety_mode", "thinking", "priority", "k")
_CHAT_MAPPED = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "seed", "frequency_penalty", "presence_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs", "strict_tools",
})
_P_MIN, _P_MAX = 0.01, 0.99  # Cohere's bounds for p (top_p); OpenAI's 1.0 ("no nucleus cut") is sent as 0.99


def chat_request(body: dict[str, Any]) -> NativeRequest:
    """Return the /v2/chat request for an OpenAI chat body."""
    _refuse(body)
    native: dict[str, Any] = {}
    if body.get("model") is not None:
        native["model"] = body["model"]
    if body.get("messages") is not None:  # absent: Cohere itself says what is missing
        native["messages"] = chat_messages(body["messages"])
    tools, strict_tools = chat_tools(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is not None:
        tools, mapped = tool_choice(choice, tools)
        if mapped is not None:
            native["tool_choice"] = mapped
    if tools is not None:
        native["tools"] = tools
    if strict_tools or body.get("strict_tools") is True:
        native["strict_tools"] = True
    _sampling(body, native)
    if body.get("response_format") is not None:
        native["response_format"] = response_format(body["response_format"])
    if body.get("logprobs") is True:
        native["logprobs"] = True
    for name in _CHAT_NATIVE:
        if body.get(name) is not None:
            native[name] = body[name]
    if body.get("stream") is True:
        native["stream"] = True
    _warn_dropped(body, _CHAT_MAPPED | set(_CHAT_NATIVE), CHAT_PATH, _silent_chat(body))
    return NativeRequest(CHAT_PATH, native, from_root=True)


def _refuse(body: dict[str, Any]) -> None:
    """Raise BadRequest for what Cohere cannot do and dropping would change the meaning of."""
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: cohere answers with one choice only; send n=1 or leave n out")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise BadRequest(f"{name} (the deprecated function calling) is not translated for cohere; "
                             "send tools and tool_choice")


def _sampling(body: dict[str, Any], native: dict[str, Any]) -> None:
    """Copy the sampling and length parameters under Cohere's names."""
    for name in ("temperature", "seed", "frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            native[name] = body[name]  # out of Cohere's range: Cohere says so, the client sees it
    top_p = body.get("top_p")
    if top_p is not None:
        native["p"] = min(max(top_p, _P_MIN), _P_MAX) if _number(top_p) else top_p
    if body.get("top_k") is not None:
        native["k"] = body["top_k"]
    limit = shape.max_tokens(body)
    if limit is not None:
        native["max_tokens"] = limit
    stops = shape.stop_sequences(body)
    if stops:
        native["stop_sequences"] = stops


def _silent_chat(body: dict[str, Any]) -> set[str]:
    """Return the mapped names that still say something Cohere cannot do, so their dropping is warned about."""
    dropped = set()
    if body.get("parallel_tool_calls") is False:
        dropped.add("parallel_tool_calls")  # Cohere may always call several tools at once
    if body.get("top_logprobs"):
        dropped.add("top_logprobs")  # Cohere gives the chosen tokens' logprobs only
    return dropped


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Return Cohere v2 messages for OpenAI ones (the system prompt stays in the list, as v2 takes it)."""
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            result.append({"role": "system", "content": _text_content(content, i, role)})
        elif role == "user":
            result.append({"role": "user", "content": _user_content(content, i)})
        elif role == "assistant":
            result.append(_assistant(message, i))
        elif role == "tool":
            tool: dict[str, Any] = {"role": "tool"}
            if message.get("tool_call_id") is not None:  # missing: Cohere refuses it and says why
                tool["tool_call_id"] = message["tool_call_id"]
            tool["content"] = _text_content(content, i, role)
            result.append(tool)
        else:
            raise BadRequest(f"messages[{i}].role {role!r} cannot be sent to cohere "
                             "(it takes system, developer, user, assistant and tool)")
    return result


def _text_content(content: Any, i: int, role: str) -> Any:
    """Return a text-only content: a string, or a list of Cohere text blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text") or ""})
        elif kind != "refusal":  # a refusal part repeats what the assistant declined: nothing to send
            raise BadRequest(f"messages[{i}].content[{j}]: cohere takes only text in {role} messages, not {kind!r}")
    return blocks


def _user_content(content: Any, i: int) -> Any:
    """Return a user content: a string, or Cohere text and image_url blocks."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "image_url":
            blocks.append({"type": "image_url", "image_url": _image(part.get("image_url"), i, j)})
        else:
            raise BadRequest(f"messages[{i}].content[{j}]: cohere chat takes text and image_url parts, not {kind!r}")
    return blocks


def _image(value: Any, i: int, j: int) -> dict[str, Any]:
    """Return Cohere's image_url: it takes data: URLs and web URLs as OpenAI does, and the same detail levels."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
        raise BadRequest(f"messages[{i}].content[{j}].image_url.url must be a data: URL or an http(s) URL")
    image: dict[str, Any] = {"url": url}
    if isinstance(value, dict) and value.get("detail") in ("auto", "low", "high"):
        image["detail"] = value["detail"]
    return image


def _assistant(message: dict[str, Any], i: int) -> dict[str, Any]:
    """Return an assistant turn; with tool calls its text becomes the tool_plan, as Cohere writes it."""
    result: dict[str, Any] = {"role": "assistant"}
    calls = message.get("tool_calls")
    content = message.get("content")
    if calls:
        if not isinstance(calls, list):
            raise BadRequest(f"messages[{i}].tool_calls must be a list")
        plan = shape.text_of(content)
        if plan:
            result["tool_plan"] = plan
        result["tool_calls"] = [_past_call(call, i) for call in calls]
    elif content is not None:
        result["content"] = _text_content(content, i, "assistant")
    return result


def _past_call(call: Any, i: int) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest(f"messages[{i}].tool_calls items must be function calls")
    function = call["function"]
    return {"id": call.get("id"), "type": "function",
            "function": {"name": function.get("name"), "arguments": function.get("arguments") or "{}"}}


def chat_tools(tools: Any) -> tuple[list[dict[str, Any]] | None, bool]:
    """Return Cohere tools (type function, JSON-schema parameters) and whether any asked for strict."""
    if tools is None:
        return None, False
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    result = []
    strict = False
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise BadRequest(f"tools[{i}]: cohere takes function tools only")
        function = tool["function"]
        # Cohere requires parameters; an OpenAI function without them takes no arguments.
        native: dict[str, Any] = {"name": function.get("name"),
                                  "parameters": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            native["description"] = function["description"]
        strict = strict or function.get("strict") is True  # Cohere's strictness is per request, not per tool
        result.append({"type": "function", "function": native})
    return result, strict


def tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Return the tools to send and Cohere's tool_choice for an OpenAI one.

    Cohere has REQUIRED and NONE and no way to name a function, so a named choice sends that one
    tool alone with REQUIRED: the model must call it, which is what the client asked for.
    """
    if choice == "auto":
        return tools, None  # Cohere's default when tool_choice is left out
    if choice in ("required", "none"):
        return tools, str(choice).upper()
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [tool for tool in tools or [] if tool["function"].get("name") == name]
        if not chosen:
            raise BadRequest(f"tool_choice names function {name!r}, which is not in tools")
        return chosen, "REQUIRED"
    raise BadRequest("tool_choice must be auto, required, none or {type: function, function: {name}} for cohere")


def response_format(value: Any) -> dict[str, Any]:
    """Return Cohere's response_format: JSON mode, with the schema when the client gave one."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {"type": "text"}
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = value.get("json_schema") if isinstance(value, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return {"type": "json_object", "json_schema": schema} if isinstance(schema, dict) else {"type": "json_object"}
    raise BadRequest(f"response_format type {kind!r} is not supported by cohere (text, json_object, json_schema)")


def _warn_dropped(body: dict[str, Any], known: set[str] | frozenset[str], path: str, extra: set[str]) -> None:
    """Log, by name only, the parameters Cohere has no place for."""
    dropped = sorted({name for name, value in body.items() if name not in known and value is not None} | extra)
    if dropped:
        log.warning("cohere %s has no place for %s: dropped", path, ", ".join(dropped))
