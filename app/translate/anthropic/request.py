"""OpenAI chat bodies to Messages API bodies: the request half of the `anthropic` adapter."""

from __future__ import annotations

import json
import logging
from typing import Any

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts

log = logging.getLogger(__package__)  # the package's name, as before the split into modules

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often send none
_KEPT = ("temperature", "top_p", "top_k", "thinking")  # same name and meaning on both sides
# Read by the translation below: everything else is dropped with a warning.
_HANDLED = frozenset({*_KEPT, "model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options",
                      "stop", "user", "n", "tools", "functions", "tool_choice", "function_call", "parallel_tool_calls",
                      "response_format", "modalities", "audio"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def native_body(body: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
    """Return the Messages API body for an OpenAI chat body (BadRequest for what cannot be sent)."""
    _refuse(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system, turns = _conversation(messages)
    limit = shape.max_tokens(body)
    result: dict[str, Any] = {"model": _model(body, facts),
                              "max_tokens": DEFAULT_MAX_TOKENS if limit is None else limit}
    if system:
        result["system"] = system[0]["text"] if len(system) == 1 and set(system[0]) == {"type", "text"} else system
    result["messages"] = turns
    result.update({name: body[name] for name in _KEPT if body.get(name) is not None})
    stops = shape.stop_sequences(body)
    if stops:
        result["stop_sequences"] = stops
    if isinstance(body.get("user"), str) and body["user"]:
        result["metadata"] = {"user_id": body["user"]}
    result.update(_tooling(body))
    output = _output_format(body.get("response_format"))
    if output is not None:
        result["output_config"] = {"format": output}
    if body.get("stream") is True:
        result["stream"] = True  # the stream always reports usage: stream_options has nothing to ask
    dropped = sorted(name for name in body if name not in _HANDLED)
    if dropped:
        log.warning("anthropic: dropped %s, which the Messages API does not take", ", ".join(dropped))
    return result


def _refuse(body: dict[str, Any]) -> None:
    """Refuse what cannot be dropped without changing what the client gets back."""
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: anthropic returns one choice per call; n must be 1 or absent")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise BadRequest("audio: anthropic does not answer with audio; send modalities [\"text\"] or none")


def _model(body: dict[str, Any], facts: CallFacts) -> str:
    model = body.get("model")  # the leaf's body: override_params may have changed what the client sent
    if isinstance(model, str) and model.startswith("@") and "/" in model:
        model = model.partition("/")[2]
    model = model or facts.model
    if not isinstance(model, str) or not model:
        raise BadRequest("model: anthropic needs a model name")
    return model


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the system blocks and the user/assistant turns of OpenAI messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            # Anthropic takes one top-level system prompt: a system message anywhere joins it, in order.
            system += _parts(message.get("content"), where, ("text",))
        elif role == "user":
            _append(turns, "user", _user_content(message.get("content"), where))
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            if blocks:  # an empty assistant turn is refused by Anthropic and says nothing
                _append(turns, "assistant", blocks)
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        elif role == "function":
            raise BadRequest(f"{where}: role \"function\" (legacy function calling) carries no call id; "
                             "anthropic needs tool_calls and role \"tool\" messages")
        else:
            raise BadRequest(f"{where}.role {role!r} is not one of system, developer, user, assistant, tool")
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Add a turn; a turn of the same role as the last one joins it (tool results share one user turn)."""
    if turns and turns[-1]["role"] == role:
        last = turns[-1]
        last["content"] = _as_blocks(last["content"]) + _as_blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return _parts(content, where, ("text", "image_url", "file"))


def _parts(content: Any, where: str, allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """Return Anthropic blocks for an OpenAI content (a string or a list of parts)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content parts")
    return [_part(part, f"{where}.content[{j}]", allowed) for j, part in enumerate(content)]


def _part(part: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "refusal" and "text" in allowed:
        kind, part = "text", {"text": part.get("refusal", "")}  # an assistant's earlier refusal is its words
    if kind not in allowed:
        names = ", ".join(allowed)
        if kind == "input_audio":
            raise BadRequest(f"{where}: anthropic does not take audio input")
        raise BadRequest(f"{where}: content part type {kind!r} cannot be sent to anthropic here (allowed: {names})")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.text must be a string")
        block: dict[str, Any] = {"type": "text", "text": part["text"]}
    elif kind == "image_url":
        block = _image(part.get("image_url"), where)
    else:
        block = _document(part.get("file"), where)
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]  # prompt caching marks (a Portkey extension) carry over
    return block


def _image(value: Any, where: str) -> dict[str, Any]:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url must be a string")
    if url.startswith("data:"):
        media, data = _data_url(url, f"{where}.image_url.url")
        media = "image/jpeg" if media == "image/jpg" else media
        if media not in _IMAGE_TYPES:
            raise BadRequest(f"{where}.image_url.url: image type {media or '(none)'} is not supported by anthropic "
                             "(image/jpeg, image/png, image/gif, image/webp)")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(f"{where}.image_url.url must be an http(s) URL or a base64 data: URL")


def _document(value: Any, where: str) -> dict[str, Any]:
    data_url = value.get("file_data") if isinstance(value, dict) else None
    if not isinstance(data_url, str):
        raise BadRequest(f"{where}.file: anthropic needs the file inline as file_data (a base64 data: URL); "
                         "OpenAI file ids mean nothing to it")
    media, data = _data_url(data_url, f"{where}.file.file_data")
    if media != "application/pdf":
        raise BadRequest(f"{where}.file.file_data: anthropic takes PDF files here, not {media or '(none)'}")
    return {"type": "document", "source": {"type": "base64", "media_type": media, "data": data}}


def _data_url(url: str, where: str) -> tuple[str, str]:
    """Return the media type and base64 data of a `data:<type>;base64,<data>` URL."""
    header, comma, data = url[len("data:"):].partition(",")
    media, *params = header.split(";")
    if not comma or "base64" not in (param.strip().lower() for param in params) or not data:
        raise BadRequest(f"{where} must be a base64 data URL (data:<type>;base64,<data>)")
    return media.strip().lower(), data


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    # Thinking blocks handed back (from content_blocks, see completion()) must lead the turn, signature intact.
    extras = message.get("content_blocks")
    blocks = [block for block in extras if isinstance(block, dict)
              and block.get("type") in ("thinking", "redacted_thinking")] if isinstance(extras, list) else []
    blocks += _parts(message.get("content"), where, ("text",))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be a list")
    blocks += [_tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
        raise BadRequest(f"{where} needs an id and a function with a name")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        arguments = "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise BadRequest(f"{where}.function.arguments is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object (anthropic's tool input is one)")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_call_id is required for a tool message")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:  # Anthropic refuses an empty text; a result without content is allowed
            block["content"] = content
    elif content is not None:
        block["content"] = _parts(content, where, ("text", "image_url"))
    return block


def _tooling(body: dict[str, Any]) -> dict[str, Any]:
    """Return the native `tools` and `tool_choice` for OpenAI tools (or legacy functions)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None and body.get("functions") is not None:
        if not isinstance(body["functions"], list):
            raise BadRequest("functions must be a list")
        tools = [{"type": "function", "function": function} for function in body["functions"]]
        choice = _legacy_choice(body.get("function_call"))
    if not tools:
        if choice not in (None, "none", "auto"):
            log.warning("anthropic: tool_choice dropped, the request has no tools")
        return {}
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    result: dict[str, Any] = {"tools": [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]}
    native = _tool_choice(choice)
    if body.get("parallel_tool_calls") is False and (native is None or native["type"] != "none"):
        native = {**(native or {"type": "auto"}), "disable_parallel_tool_use": True}
    if native is not None:
        result["tool_choice"] = native
    return result


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"{where}: tool type {kind!r} cannot be sent to anthropic (only function tools)")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where}.function.name is required")
    result: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        result["description"] = function["description"]
    result["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    if function.get("strict") is True:
        result["strict"] = True
    if isinstance(tool.get("cache_control"), dict):
        result["cache_control"] = tool["cache_control"]
    return result


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise BadRequest("tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\"}} "
                     "for anthropic")


def _legacy_choice(function_call: Any) -> Any:
    if isinstance(function_call, dict):
        return {"type": "function", "function": {"name": function_call.get("name")}}
    return function_call


def _output_format(response_format: Any) -> dict[str, Any] | None:
    """Return Anthropic's structured output format for an OpenAI response_format."""
    definition = shape.json_schema_format(response_format, "anthropic")
    return None if definition is None else {"type": "json_schema", "schema": definition["schema"]}
