"""Chat requests: OpenAI chat bodies as Converse messages, system, inferenceConfig, toolConfig and outputConfig."""

from __future__ import annotations

import binascii
import json
import logging
from base64 import b64decode
from typing import Any

from app.errors import BadRequest
from app.jsonwire import compact
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest
from app.translate.bedrock.paths import model_of, model_path

log = logging.getLogger(__package__)  # the package's name, as before the split into modules

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
# Chat parameters read by the translation (the rest is dropped with a warning, see _warn_dropped).
_CHAT_READ = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                        "temperature", "top_p", "stop", "tools", "tool_choice", "n", "response_format", "top_k"})
# Values that ask for nothing beyond what bedrock does anyway: dropping them changes nothing, so no warning.
_HARMLESS = {"parallel_tool_calls": True, "logprobs": False, "store": False}
_LEGACY_FUNCTIONS = ("functions", "function_call")


def converse_request(body: dict[str, Any], facts: CallFacts) -> NativeRequest:
    """Return the Converse request for an OpenAI chat body."""
    model = model_of(body, facts)
    _refuse_unsupported(body)
    system, messages = converse_messages(body.get("messages"))
    native: dict[str, Any] = {"messages": messages}
    if system:
        native["system"] = system
    inference = inference_config(body)
    if inference:
        native["inferenceConfig"] = inference
    tools = tool_config(body, _holds_tool_blocks(messages))
    if tools:
        native["toolConfig"] = tools
    output = output_config(body.get("response_format"))
    if output:
        native["outputConfig"] = output
    extra = additional_fields(body, model)
    if extra:
        native["additionalModelRequestFields"] = extra
    _warn_dropped(body)
    operation = "converse-stream" if body.get("stream") is True else "converse"
    return NativeRequest(model_path(model, operation), native)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n: bedrock answers with one choice per call; n > 1 is not supported "
                         "(send n separate requests instead)")
    for name in _LEGACY_FUNCTIONS:
        if body.get(name) is not None:
            raise BadRequest(f"{name} is the deprecated form of tools; bedrock calls take tools and tool_choice")


def converse_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (system blocks, Converse messages) for OpenAI messages.

    System and developer messages become `system`, wherever they stand. Tool results become
    the user turn's toolResult blocks, and consecutive turns of one role are merged into one,
    since Converse requires user and assistant turns to alternate.
    """
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _system_text(message.get("content"), where)
            if text.strip():
                system.append({"text": text})
        elif role == "user":
            _append(turns, "user", user_blocks(message.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", assistant_blocks(message, where))
        elif role == "tool":
            _append(turns, "user", [tool_result(message, where)])
        else:
            raise BadRequest(f"{where}.role: {role!r} is not a role bedrock takes "
                             "(system, developer, user, assistant, tool)")
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return  # an empty message says nothing, and Converse refuses a message without content
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _system_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for position, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"{where}.content[{position}]: a system message may hold text parts only")
        return "\n".join(part.get("text") or "" for part in content)
    if content is None:
        return ""
    raise BadRequest(f"{where}.content must be a string or a list of parts")


def user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Return the Converse content blocks of a user message (text and images)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []  # Converse refuses blank text blocks
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts")
    blocks = []
    for position, part in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text must be a string")
            if text.strip():
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(image_block(part.get("image_url"), at))
        else:
            raise BadRequest(f"{at}: content parts of type {kind!r} are not supported by bedrock "
                             "(text and image_url are)")
    return blocks


def image_block(image: Any, where: str) -> dict[str, Any]:
    """Return a Converse image block for an OpenAI image_url (a base64 data: URL)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url must be a string")
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "such"
        raise BadRequest(f"{where}: bedrock takes images inline only and cannot fetch {scheme} URLs; "
                         "send the image as a data URL (data:image/png;base64,...)")
    header, _, data = url[5:].partition(",")
    media, *params = header.split(";")
    image_format = IMAGE_FORMATS.get(media.strip().lower())
    if image_format is None:
        raise BadRequest(f"{where}: bedrock takes png, jpeg, gif and webp images, not {media or 'untyped data'}")
    if "base64" not in (p.strip().lower() for p in params):
        raise BadRequest(f"{where}: the image data URL must be base64-encoded (data:{media};base64,...)")
    data = "".join(data.split())
    try:
        b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: the image data URL is not valid base64") from None
    # The JSON form of Converse takes a blob as its base64 text: the client's bytes go as they are.
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Return the Converse content blocks of an assistant message (text, then its tool calls)."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(part.get("text") or part.get("refusal") or "" for part in content
                       if isinstance(part, dict) and part.get("type") in ("text", "refusal"))
    elif isinstance(content, str) or content is None:
        text = content or ""
    else:
        raise BadRequest(f"{where}.content must be a string, a list of parts or null")
    blocks: list[dict[str, Any]] = [{"text": text}] if text.strip() else []
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be a list")
    for position, call in enumerate(calls):
        at = f"{where}.tool_calls[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not call.get("id"):
            raise BadRequest(f"{at} needs an id and a function with a name")
        blocks.append({"toolUse": {"toolUseId": str(call["id"]), "name": function["name"],
                                   "input": _parsed_arguments(function.get("arguments"), at)}})
    return blocks


def _parsed_arguments(arguments: Any, where: str) -> Any:
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        raise BadRequest(f"{where}.function.arguments is not valid JSON; bedrock needs the tool input "
                         "as a JSON value") from None


def tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    """Return the toolResult block of a role "tool" message."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_call_id is required on a tool message")
    text = shape.text_of(message.get("content"))
    # Sent as text, not as a json block: not every model takes json blocks, and the model then
    # sees exactly what the tool returned.
    return {"toolResult": {"toolUseId": call_id, "content": [{"text": text}] if text else []}}


def _holds_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in block or "toolResult" in block for turn in messages for block in turn["content"])


def inference_config(body: dict[str, Any]) -> dict[str, Any]:
    """Return Converse's inferenceConfig: maxTokens, temperature, topP, stopSequences."""
    config: dict[str, Any] = {}
    max_tokens = shape.max_tokens(body)
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stops = shape.stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    return config


def tool_config(body: dict[str, Any], history_has_tools: bool) -> dict[str, Any] | None:
    """Return Converse's toolConfig for the tools and tool_choice, or None when no tools are sent."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    specs = [{"toolSpec": tool_spec(tool, f"tools[{index}]")} for index, tool in enumerate(tools)]
    if choice == "none":
        if not history_has_tools:
            # Converse has no "none": a model that is not shown the tools cannot call them.
            log.warning("bedrock: tool_choice none: the tools are not sent, so the model cannot call them")
            return None
        # Converse refuses tool calls and results in the messages without a toolConfig.
        log.warning("bedrock: tool_choice none cannot be sent with tool calls in the messages; "
                    "the tools are sent with toolChoice auto")
        return {"tools": specs}
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest('tool_choice must be "none", "auto", "required" or '
                             '{"type": "function", "function": {"name": ...}}')
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise BadRequest('tool_choice must be "none", "auto", "required" or '
                         '{"type": "function", "function": {"name": ...}}')
    return config


def tool_spec(tool: Any, where: str) -> dict[str, Any]:
    """Return a Converse toolSpec for an OpenAI function tool."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
        raise BadRequest(f"{where}: bedrock takes function tools only ({{\"type\": \"function\", \"function\": ...}})")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.function.name is required")
    schema = function.get("parameters")
    spec: dict[str, Any] = {"name": name,
                            "inputSchema": {"json": schema if isinstance(schema, dict)
                                            else {"type": "object", "properties": {}}}}
    if isinstance(function.get("description"), str) and function["description"]:
        spec["description"] = function["description"]
    if function.get("strict") is True:
        spec["strict"] = True  # Converse's strict tool use: inputs validated against the schema
    return spec


def output_config(response_format: Any) -> dict[str, Any] | None:
    """Return Converse's outputConfig for a json_schema response_format; json_object is refused."""
    definition = shape.json_schema_format(response_format, "bedrock")
    if definition is None:
        return None
    json_schema: dict[str, Any] = {"schema": compact(definition["schema"])}
    for name in ("name", "description"):
        if isinstance(definition.get(name), str) and definition[name]:
            json_schema[name] = definition[name]
    # Converse takes the schema as a JSON string.
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": json_schema}}}


def additional_fields(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Return additionalModelRequestFields: top_k, where the model family documents where it goes."""
    top_k = body.get("top_k")
    if top_k is None:
        return {}
    if "anthropic." in model:
        return {"top_k": top_k}
    if "amazon.nova" in model:
        return {"inferenceConfig": {"topK": top_k}}
    log.warning("bedrock: top_k dropped: no documented place for it with model %s", model)
    return {}


def _warn_dropped(body: dict[str, Any]) -> None:
    dropped = sorted(name for name, value in body.items()
                     if name not in _CHAT_READ and value is not None and _HARMLESS.get(name, None) != value)
    if dropped:
        log.warning("bedrock: parameters dropped (Converse has no equivalent): %s", ", ".join(dropped))
