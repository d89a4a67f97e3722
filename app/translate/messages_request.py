"""Anthropic Messages requests as unified chat requests (OpenAI's format): the request half of /v1/messages."""

from __future__ import annotations

import logging
from typing import Any

from app.errors import BadRequest
from app.jsonwire import compact
from app.translate import shape
from app.translate.messages_answer import as_dict

log = logging.getLogger(__name__)

# Copied as they are: the same name and meaning in both formats.
_KEPT = ("model", "temperature", "top_p")
# Read by the translation below; any other field is dropped with a warning, or refused when listed here.
_HANDLED = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
                      "metadata", "stream", "tools", "tool_choice", "output_config", "output_format"})
# Fields whose loss would change what the model does (tools it would have had): refused, not dropped.
_REFUSED = {"mcp_servers": "MCP servers run only on Anthropic's API"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_ERROR_PREFIX = "Error: "  # the unified format has no is_error flag: the model reads it in the result's text


def unified_request(body: dict[str, Any]) -> dict[str, Any]:
    """Return the unified chat body for an Anthropic Messages body (BadRequest for what cannot be sent)."""
    _check(body)
    result: dict[str, Any] = {name: body[name] for name in _KEPT if body.get(name) is not None}
    result["messages"] = _system(body.get("system")) + _messages(body["messages"])
    result["max_tokens"] = body["max_tokens"]
    stops = body.get("stop_sequences")
    if stops:
        result["stop"] = list(stops)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        result["user"] = metadata["user_id"]
    if body.get("stream") is True:
        # The stream's closing message_delta carries the usage: ask for it whatever the client said.
        result["stream"] = True
        result["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools:
        result["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
        result.update(_tool_choice(body.get("tool_choice")))
    response_format = _response_format(body)
    if response_format is not None:
        result["response_format"] = response_format
    dropped = sorted(name for name in body if name not in _HANDLED and name not in _REFUSED)
    if dropped:
        log.warning("/v1/messages: dropped %s, which the unified chat format cannot carry", ", ".join(dropped))
    return result


def _check(body: dict[str, Any]) -> None:
    """Refuse what Anthropic itself would refuse, with its wording, and fields that cannot be dropped."""
    if "max_tokens" not in body:
        raise BadRequest("max_tokens: Field required")
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool):
        raise BadRequest("max_tokens: Input should be a valid integer")
    if "messages" not in body:
        raise BadRequest("messages: Field required")
    if not isinstance(body["messages"], list):
        raise BadRequest("messages: Input should be a valid list")
    for name, why in _REFUSED.items():
        if body.get(name):
            raise BadRequest(f"{name}: {why}; this provider cannot take them")


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise BadRequest("system: Input should be a valid string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"system.{i}: only text blocks can be sent to this provider")
        texts.append(str(block.get("text", "")))
    return [{"role": "system", "content": "\n".join(texts)}] if texts else []


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise BadRequest(f"{path}: Input should be a valid dictionary")
        role = message.get("role")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif not isinstance(content, list):
            raise BadRequest(f"{path}.content: Input should be a valid string or list")
        if role == "user":
            result.extend(_user(content, path))
        elif role == "assistant":
            result.append(_assistant(content, path))
        else:
            raise BadRequest(f"{path}.role: Input should be 'user' or 'assistant'")
    return result


def _user(blocks: list[Any], path: str) -> list[dict[str, Any]]:
    """Return the tool results of a user turn as `tool` messages, then the rest of the turn as one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{path}.content.{j}"
        kind = _kind(block, where)
        if kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)  # a tool message carries text only: its images ride in the user message after
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            parts.append(_part(block, kind, where))
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant(blocks: list[Any], path: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{path}.content.{j}"
        kind = _kind(block, where)
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = compact(block.get("input") or {}, ensure_ascii=False)
            calls.append(shape.tool_call(str(block.get("id", "")), str(block.get("name", "")), arguments))
        elif kind not in ("thinking", "redacted_thinking"):  # signed reasoning only Anthropic can read back
            raise BadRequest(f"{where}.type: {kind!r} blocks cannot be sent to this provider")
    text = "\n".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _kind(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise BadRequest(f"{where}: Input should be a content block with a type")
    return str(block["type"])


def _part(block: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """Return the unified content part of a user block (text, image or document)."""
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        return _image(block, where)
    if kind == "document":
        return _document(block, where)
    raise BadRequest(f"{where}.type: {kind!r} blocks cannot be sent to this provider")


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = as_dict(block.get("source"))
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise BadRequest(f"{where}.source.type: image sources of type {source.get('type')!r} cannot be sent to "
                         "this provider; send base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = as_dict(block.get("source"))
    if source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if source.get("type") == "base64":
        data_url = f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"
        return {"type": "file", "file": {"filename": str(block.get("title") or "document.pdf"),
                                         "file_data": data_url}}
    raise BadRequest(f"{where}.source.type: document sources of type {source.get('type')!r} cannot be sent to "
                     "this provider; send base64 or text")


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the `tool` message of a tool_result block, and the images it held."""
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            inner_where = f"{where}.content.{k}"
            kind = _kind(inner, inner_where)
            if kind == "image":
                images.append(_image(inner, inner_where))
            else:
                part = _part(inner, kind, inner_where)
                if part["type"] != "text":
                    raise BadRequest(f"{inner_where}.type: only text and images can be sent in a tool result "
                                     "to this provider")
                texts.append(part["text"])
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = _ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}, images


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise BadRequest(f"{where}: Input should be a valid dictionary")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise BadRequest(f"{where}.type: {kind!r} is a tool Anthropic runs itself; this provider cannot run it")
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        return {}
    kind = choice.get("type")
    result: dict[str, Any] = {}
    if kind == "tool":
        result["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in _TOOL_CHOICES:
        result["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise BadRequest(f"tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', not {kind!r}")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        result["parallel_tool_calls"] = False
    return result


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Return the JSON-schema response format of output_config.format (or the older output_format)."""
    config = as_dict(body.get("output_config"))
    if config.get("effort") is not None:
        log.warning("/v1/messages: dropped output_config.effort, which the unified chat format cannot carry")
    fmt = config.get("format") or body.get("output_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise BadRequest("output_config.format: only {\"type\": \"json_schema\", \"schema\": {...}} can be sent "
                         "to this provider")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
