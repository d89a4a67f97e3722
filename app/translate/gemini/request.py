"""Chat requests: OpenAI chat bodies as generateContent contents, config and tools."""

from __future__ import annotations

import json
import logging
import mimetypes
from typing import Any
from urllib.parse import urlsplit

from app.errors import BadRequest
from app.translate import shape
from app.translate.gemini.paths import Site
from app.translate.gemini.schema import gemini_schema
from app.translate.gemini.signature import _signature_of

log = logging.getLogger(__package__)  # the package's name, as before the split into modules


# OpenAI parameters Gemini has no place for: dropped with a warning (the answer keeps its meaning).
_DROPPED = frozenset({
    "user", "logit_bias", "logprobs", "top_logprobs", "metadata", "store", "service_tier", "modalities", "audio",
    "prediction", "web_search_options", "safety_identifier", "prompt_cache_key", "verbosity"})
# Parameters this adapter reads (or that concern the gateway's side of the call only).
_READ = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "n", "seed", "presence_penalty", "frequency_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "reasoning_effort"})
# reasoning_effort as Gemini 2.5's thinking budget: Google's own OpenAI-compatible endpoint maps low, medium and
# high to these budgets and none to no thinking; minimal takes the smallest one.
_THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_ROLES = {"user": "user", "assistant": "model", "tool": "user", "function": "user"}


def _warn_dropped(slug: str, body: dict[str, Any]) -> None:
    dropped = sorted(name for name in body if name in _DROPPED or name not in _READ)
    if body.get("parallel_tool_calls") is False:
        dropped.append("parallel_tool_calls=false")  # Gemini decides alone whether to call several functions
    if dropped:
        log.warning("%s: dropped parameters it does not take: %s", slug, ", ".join(dropped))


def _contents(messages: list[Any], site: Site) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (systemInstruction parts, contents) for OpenAI messages."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name, for the tool results that answer it
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = shape.text_of(message.get("content"))
            if text:
                system.append({"text": text})
            continue
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequest(f"messages[{index}].role {str(role)[:40]!r} is not supported by {site.slug}")
        if role == "user":
            parts = _user_parts(message.get("content"), site, index)
        elif role == "assistant":
            parts = _assistant_parts(message, names, index)
        else:
            parts = [_function_response(message, names, index)]
        if not parts:
            continue  # an empty turn: Gemini refuses empty parts and empty text
        native_role = _ROLES[role]
        if contents and contents[-1]["role"] == native_role:
            # Gemini wants turns to alternate, and all answers to one model turn's calls in one turn.
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": native_role, "parts": parts})
    return system, contents


def _user_parts(content: Any, site: Site, index: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"messages[{index}].content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media(url, site, index, "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                         "data": audio.get("data") or ""}})
        elif kind == "file":
            file = part.get("file") or {}
            url = file.get("file_data") or file.get("file_id")
            parts.append(_media(url, site, index, "application/pdf"))
        else:
            raise BadRequest(f"messages[{index}]: content part type {str(kind)[:40]!r} is not supported by "
                             f"{site.slug}")
    return parts


def _media(url: Any, site: Site, index: int, default_type: str) -> dict[str, Any]:
    """Return the part for a media URL: inline bytes for a data URL, fileData where Google fetches it."""
    if not isinstance(url, str) or not url:
        raise BadRequest(f"messages[{index}]: a media part needs a URL")
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        kinds = header.split(";")
        if "base64" not in kinds[1:]:
            raise BadRequest(f"messages[{index}]: {site.slug} takes data URLs only base64-encoded")
        return {"inlineData": {"mimeType": kinds[0] or default_type, "data": data}}
    if site.file_uri(url):
        mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_type
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    where = "an http(s) or gs:// URL" if site.vertex else ("an http(s) URL (a gs:// object must first be registered "
                                                          "with the Gemini Files API)")
    raise BadRequest(f"messages[{index}]: {site.slug} takes media as a base64 data URL or {where}")


def _assistant_parts(message: dict[str, Any], names: dict[str, str], index: int) -> list[dict[str, Any]]:
    text = shape.text_of(message.get("content"))
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls = [*calls, {"id": legacy.get("name"), "function": legacy}]
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise BadRequest(f"messages[{index}].tool_calls: each call needs function.name")
        name = str(function["name"])
        part: dict[str, Any] = {"functionCall": {"name": name,
                                                 "args": _arguments(function.get("arguments"), index)}}
        call_id = str(call.get("id") or "")
        names[call_id] = name
        signature = _signature_of(call_id)
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(raw: Any, index: int) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"messages[{index}].tool_calls: function.arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest(f"messages[{index}].tool_calls: function.arguments must be a JSON object")
    return value


def _function_response(message: dict[str, Any], names: dict[str, str], index: int) -> dict[str, Any]:
    name = names.get(str(message.get("tool_call_id") or "")) or message.get("name")
    if not name:
        raise BadRequest(f"messages[{index}]: a tool result must answer a tool_call_id of an earlier assistant "
                         "message (Gemini needs the function's name)")
    text = shape.text_of(message.get("content"))
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    # The response must be a JSON object: an object result goes as it is, anything else under "content".
    response = value if isinstance(value, dict) else {"content": value}
    return {"functionResponse": {"name": str(name), "response": response}}


def _generation_config(body: dict[str, Any], slug: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for source, target in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                           ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                           ("n", "candidateCount")):
        if body.get(source) is not None:
            config[target] = body[source]
    limit = shape.max_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stops = shape.stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    config.update(_response_format(body.get("response_format"), slug))
    thinking = _thinking(body)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _thinking(body: dict[str, Any]) -> dict[str, Any] | None:
    """Return Gemini's thinkingConfig for reasoning_effort: a level on Gemini 3 models, a token budget before."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _THINKING_BUDGETS:
        raise BadRequest(f"reasoning_effort must be one of {', '.join(_THINKING_BUDGETS)}")
    model = str(body.get("model") or "").rpartition("/")[2]
    if model.startswith("gemini-3"):
        # Gemini 3 takes a thinking level (and refuses a budget with it); it cannot switch thinking off.
        if effort == "none":
            raise BadRequest("reasoning_effort none: Gemini 3 models always think; send minimal or low instead")
        return {"thinkingLevel": effort}
    return {"thinkingBudget": _THINKING_BUDGETS[effort]}


def _response_format(value: Any, slug: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return {}
    kind = value.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            return {"responseMimeType": "application/json"}
        return {"responseMimeType": "application/json", "responseSchema": gemini_schema(schema, slug)}
    raise BadRequest(f"response_format type {str(kind)[:40]!r} is not supported by {slug}")


def _tools(body: dict[str, Any], slug: str) -> list[dict[str, Any]]:
    functions = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"tools: type {str(kind)[:40]!r} is not supported by {slug}; only function tools are")
        functions.append(tool["function"])
    functions += [f for f in body.get("functions") or [] if isinstance(f, dict)]  # the legacy form
    declarations = []
    for function in functions:
        if not function.get("name"):
            raise BadRequest("tools: each function needs a name")
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if isinstance(parameters, dict):
            cleaned = gemini_schema(parameters, slug)
            # An OBJECT without properties is refused ("properties: should be non-empty for OBJECT type").
            if cleaned.get("properties") or cleaned.get("type") not in (None, "object"):
                declaration["parameters"] = cleaned
        declarations.append(declaration)
    return declarations


def _tool_config(body: dict[str, Any]) -> dict[str, Any]:
    choice = body.get("tool_choice", body.get("function_call"))
    if choice is None:
        return {}
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        return {"mode": modes[choice]}
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else choice
        if isinstance(function, dict) and function.get("name"):
            return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise BadRequest('tool_choice must be auto, none, required or {"type": "function", "function": {"name": ...}}')
