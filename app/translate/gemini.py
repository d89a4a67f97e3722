"""Google's Gemini API and Vertex AI (Google's Gemini models) as native APIs of /v1/chat/completions and /v1/embeddings.

Both speak the same GenerateContent format; they differ in where a model lives (the path) and in
how embeddings are asked for (embedContent / batchEmbedContents against Vertex's `:predict`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import mimetypes
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.errors import event_error
from app.translate.sse import SSEReader, json_data

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- where a model lives


@dataclass(frozen=True)
class Site:
    """One of Google's two homes for Gemini: the model's path and which file URLs it fetches itself."""

    slug: str
    vertex: bool

    def model_path(self, facts: CallFacts) -> str:
        """Return the path of the call's model, without the `:method` suffix."""
        model = facts.model
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"{self.slug} needs a model: set `model` in the body")
        model = model.strip()
        if not self.vertex:
            if model.startswith("tunedModels/"):
                return "/v1beta/tunedModels/" + _segment(model.removeprefix("tunedModels/"))
            return "/v1beta/models/" + _segment(model.removeprefix("models/"))
        project = _option(facts, "vertex_project_id", "x-portkey-vertex-project-id")
        region = _option(facts, "vertex_region", "x-portkey-vertex-region")
        model = model.removeprefix("publishers/google/models/").removeprefix("models/")
        return (f"/v1/projects/{_segment(project)}/locations/{_segment(region)}"
                f"/publishers/google/models/{_segment(model)}")

    def file_uri(self, url: str) -> bool:
        """Return whether a URL may go as fileData (fetched by Google) rather than inline bytes."""
        scheme = url.split(":", 1)[0].lower()
        # The Gemini API fetches http(s) URLs (public or signed) and its own Files API URIs; Cloud Storage
        # objects must be registered with its Files API first. Vertex reads gs:// and http(s) URLs directly.
        return scheme in ("http", "https") or (self.vertex and scheme == "gs")


GEMINI_API = Site("google", vertex=False)
VERTEX = Site("vertex-ai", vertex=True)


def _segment(value: str) -> str:
    # Quote everything but `@` (Vertex model versions) so a model name cannot climb or add to the path.
    return quote(value, safe="@")


def _option(facts: CallFacts, name: str, header: str) -> str:
    value = facts.options.get(name)
    if not value:
        raise BadRequest(f"vertex-ai needs {name}: send the {header} header or set it in the catalog entry")
    return value


# --------------------------------------------------------------------------- chat: the request

# OpenAI parameters Gemini has no place for: dropped with a warning (the answer keeps its meaning).
_DROPPED = frozenset({
    "user", "logit_bias", "logprobs", "top_logprobs", "metadata", "store", "service_tier", "reasoning_effort",
    "modalities", "audio", "prediction", "web_search_options", "safety_identifier", "prompt_cache_key",
    "verbosity"})
# Parameters this adapter reads (or that concern the gateway's side of the call only).
_READ = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "n", "seed", "presence_penalty", "frequency_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"})
_ROLES = {"user": "user", "assistant": "model", "tool": "user", "function": "user"}
_SIGNED = "__thought__"  # separates a tool call id from the thought signature it carries
_SIGNED_ID = re.compile(r"call_[0-9a-f]{24}" + _SIGNED + r"([A-Za-z0-9_-]+)")


class GeminiChat:
    """Translates /v1/chat/completions to generateContent / streamGenerateContent and back."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the generateContent request for an OpenAI chat body."""
        path = self.site.model_path(facts)
        _warn_dropped(self.site.slug, body)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        system, contents = _contents(messages, self.site)
        native: dict[str, Any] = {"contents": contents}
        if system:
            native["systemInstruction"] = {"parts": system}
        config = _generation_config(body, self.site.slug)
        if config:
            native["generationConfig"] = config
        tools = _tools(body, self.site.slug)
        if tools:
            native["tools"] = [{"functionDeclarations": tools}]
            choice = _tool_config(body)
            if choice:
                native["toolConfig"] = {"functionCallingConfig": choice}
        method = "streamGenerateContent?alt=sse" if facts.stream else "generateContent"
        return NativeRequest(f"{path}:{method}", native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a GenerateContentResponse."""
        native = native if isinstance(native, dict) else {}
        candidates = [c for c in native.get("candidates") or [] if isinstance(c, dict)]
        choices = []
        for index, candidate in zip(_indices(candidates), candidates, strict=True):
            text, calls = _candidate_output(candidate)
            message = shape.message(text if text or not calls else None,
                                    [shape.tool_call(*call) for call in calls])
            choices.append(_choice(index, message, _finish(candidate.get("finishReason"), bool(calls))))
        if not choices:
            # No candidate: the prompt itself was blocked (promptFeedback.blockReason), or nothing came back.
            blocked = isinstance(native.get("promptFeedback"), dict) and native["promptFeedback"].get("blockReason")
            choices.append(_choice(0, shape.message(""), shape.CONTENT_FILTER if blocked else shape.STOP))
        result = shape.completion(facts, choices[0]["message"], choices[0]["finish_reason"],
                                  _usage(native.get("usageMetadata")), model=_model_of(native))
        result["choices"] = sorted(choices, key=lambda choice: choice["index"])
        return result

    def stream(self, facts: CallFacts) -> GeminiChunks:
        """Return a parser of a `?alt=sse` stream."""
        return GeminiChunks(facts)


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
        if role not in _ROLES:
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
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    config.update(_response_format(body.get("response_format"), slug))
    return config


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


# --------------------------------------------------------------------------- JSON schema → Gemini's Schema

# The fields of Gemini's Schema (an OpenAPI 3.0 subset) that both the Gemini API and Vertex take.
_SCHEMA_KEYS = frozenset({
    "type", "format", "description", "nullable", "enum", "items", "properties", "required", "anyOf",
    "minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "default", "example", "propertyOrdering"})
# String formats the Gemini API takes (others are refused); number formats it takes.
_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
_MAX_DEPTH = 32  # a schema nested (or $ref-recursive) deeper than this is cut there
# Annotations Gemini refuses but whose loss changes nothing it generates: dropped without a warning.
_QUIET = frozenset({"title", "$schema", "$id", "$comment", "examples", "additionalProperties", "strict"})


def gemini_schema(schema: dict[str, Any], slug: str = "google") -> dict[str, Any]:
    """Return a JSON schema as Gemini's Schema: local $refs inlined, the keys Gemini refuses dropped."""
    dropped: set[str] = set()
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    result = _schema(schema, definitions, dropped, 0)
    if dropped:
        log.warning("%s: dropped JSON-schema keys Gemini does not take: %s", slug, ", ".join(sorted(dropped)))
    return result


def _schema(node: Any, definitions: dict[str, Any], dropped: set[str], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    if depth > _MAX_DEPTH:
        dropped.add("(nesting deeper than 32)")
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = definitions.get(ref.rsplit("/", 1)[-1]) if ref.startswith(("#/$defs/", "#/definitions/")) else None
        if target is None:
            dropped.add("$ref")
        merged = {**(target or {}), **{k: v for k, v in node.items() if k != "$ref"}}
        return _schema(merged, definitions, dropped, depth + 1)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:  # pydantic's way of describing a $ref'd field
        return _schema({**all_of[0], **{k: v for k, v in node.items() if k != "allOf"}}, definitions, dropped,
                       depth + 1)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) < len(value):
                result["nullable"] = True
            if len(kinds) == 1:
                result["type"] = kinds[0]
            elif kinds:
                result["anyOf"] = [{"type": kind} for kind in kinds]
        elif key == "const":
            result["enum"] = [value]
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            options = [_schema(v, definitions, dropped, depth + 1) for v in value]
            if {"nullable": True} in options:  # Optional[X]: anyOf [X, null]
                result["nullable"] = True
                options = [option for option in options if option != {"nullable": True}]
            if len(options) == 1:
                result.update(options[0])
            elif options:
                result["anyOf"] = options
        elif key == "properties" and isinstance(value, dict):
            if value:
                result["properties"] = {name: _schema(v, definitions, dropped, depth + 1) for name, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            result["items"] = _schema(value, definitions, dropped, depth + 1)
        elif key == "format" and value not in _FORMATS:
            dropped.add(f"format={value}")
        elif key in _SCHEMA_KEYS:
            result[key] = value
        elif key not in _QUIET and key not in ("$defs", "definitions"):
            dropped.add(key)
    if result.get("type") == "null":
        result = {"nullable": True}
    return result


# --------------------------------------------------------------------------- chat: the answer

_FINISH = {"STOP": shape.STOP, "MAX_TOKENS": shape.LENGTH}
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
                          json.dumps(call.get("args") or {}, separators=(",", ":"), ensure_ascii=False)))
    return "".join(text), calls


def _call_id(signature: Any) -> str:
    """Return a new tool call id; it carries the call's thought signature, which Gemini needs sent back."""
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    if not isinstance(signature, str) or not signature:
        return call_id
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return call_id  # not the base64 Gemini sends: cannot carry it safely
    # URL-safe and unpadded, so the id stays within [A-Za-z0-9_-] (ids some clients validate).
    return call_id + _SIGNED + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signature_of(call_id: str) -> str | None:
    found = _SIGNED_ID.fullmatch(call_id)
    if found is None:
        return None
    token = found.group(1)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()


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


# --------------------------------------------------------------------------- chat: the stream


class GeminiChunks:
    """Reads a `?alt=sse` stream (each event a GenerateContentResponse) into OpenAI chunks as it arrives."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.events = SSEReader()
        self.model: str | None = None
        self.started: set[int] = set()  # choices whose role was sent
        self.calls: dict[int, int] = {}  # choice → tool calls sent so far
        self.finished: set[int] = set()  # choices whose finish chunk was sent
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks these bytes complete."""
        return self._chunks(self.events.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        """Return a last event sent without a blank line after it, then the usage of the last event."""
        chunks = self._chunks(self.events.finish())
        if not self.finished or self.started - self.finished:
            # Google ends every stream with a finishReason: without one the answer was cut short.
            raise UpstreamBroke({"message": f"{self.facts.provider} error: the stream ended before its finishReason",
                                 "type": "api_error", "param": None, "code": None})
        if self.usage is not None:
            chunks.append(shape.usage_chunk(self.facts, self.usage, model=self.model))
        return chunks

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for _, text in events:
            payload = json_data(text)
            for item in payload if isinstance(payload, list) else [payload]:
                if isinstance(item, dict):
                    chunks += self._response(item)
        return chunks

    def _response(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(payload.get("error"), dict):
            raise UpstreamBroke(event_error(self.facts.provider, payload))
        self.model = _model_of(payload) or self.model
        self.usage = _usage(payload.get("usageMetadata")) or self.usage
        candidates = [c for c in payload.get("candidates") or [] if isinstance(c, dict)]
        feedback = payload.get("promptFeedback")
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            return [self._chunk(0, {"content": ""}), self._chunk(0, {}, shape.CONTENT_FILTER)]
        chunks = []
        for index, candidate in zip(_indices(candidates), candidates, strict=True):
            text, calls = _candidate_output(candidate)
            if text:
                chunks.append(self._chunk(index, {"content": text}))
            for call_id, name, arguments in calls:
                number = self.calls.get(index, 0)
                self.calls[index] = number + 1
                chunks.append(self._chunk(index, {"tool_calls": [shape.tool_call(call_id, name, arguments, number)]}))
            finish = _finish(candidate.get("finishReason"), self.calls.get(index, 0) > 0)
            if finish is not None:
                if index not in self.started:
                    chunks.append(self._chunk(index, {"content": ""}))
                chunks.append(self._chunk(index, {}, finish))
        return chunks

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if finish is not None:
            self.finished.add(index)
        elif index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", **delta}
        result = shape.chunk(self.facts, delta, finish, model=self.model)
        result["choices"][0]["index"] = index
        return result


# --------------------------------------------------------------------------- embeddings


def _inputs(body: dict[str, Any], slug: str) -> tuple[list[str], bool]:
    """Return the texts to embed and whether the client sent one (not a list)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value, False
    if isinstance(value, list) and value:
        raise BadRequest(f"input: {slug} embeds text only; token arrays are not supported")
    raise BadRequest("input must be a string or a non-empty list of strings")


def _embed_options(body: dict[str, Any], slug: str) -> dict[str, Any]:
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise BadRequest(f"encoding_format must be float or base64, not {str(encoding)[:20]!r}")
    dropped = sorted(set(body) - {"model", "input", "dimensions", "encoding_format"})
    if dropped:
        log.warning("%s: dropped parameters it does not take: %s", slug, ", ".join(dropped))
    dimensions = body.get("dimensions")
    return {"outputDimensionality": dimensions} if dimensions is not None else {}


class GeminiEmbed:
    """Translates /v1/embeddings to embedContent (one input) or batchEmbedContents (several)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the embedContent or batchEmbedContents request."""
        path = GEMINI_API.model_path(facts)
        texts, single = _inputs(body, GEMINI_API.slug)
        options = _embed_options(body, GEMINI_API.slug)
        if single or len(texts) == 1:
            return NativeRequest(f"{path}:embedContent", {"content": {"parts": [{"text": texts[0]}]}, **options})
        # Each request names its model again, as "models/<id>" (the path's resource name).
        model = path.removeprefix("/v1beta/")
        return NativeRequest(f"{path}:batchEmbedContents", {"requests": [
            {"model": model, "content": {"parts": [{"text": text}]}, **options} for text in texts]})

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for an embedContent or batchEmbedContents answer."""
        native = native if isinstance(native, dict) else {}
        if isinstance(native.get("embedding"), dict):
            vectors = [native["embedding"].get("values") or []]
        else:
            vectors = [e.get("values") or [] for e in native.get("embeddings") or [] if isinstance(e, dict)]
        meta = native.get("usageMetadata")
        tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
        return shape.embeddings(facts, vectors, tokens)


class VertexEmbed:
    """Translates /v1/embeddings to Vertex's `:predict` with one instance per input."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the predict request."""
        path = VERTEX.model_path(facts)
        texts, _ = _inputs(body, VERTEX.slug)
        native: dict[str, Any] = {"instances": [{"content": text} for text in texts]}
        options = _embed_options(body, VERTEX.slug)
        if options:
            native["parameters"] = options
        return NativeRequest(f"{path}:predict", native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for predictions[].embeddings, counting statistics.token_count."""
        native = native if isinstance(native, dict) else {}
        vectors = []
        tokens: int | None = None
        for prediction in native.get("predictions") or []:
            embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
            embeddings = embeddings if isinstance(embeddings, dict) else {}
            vectors.append(embeddings.get("values") or [])
            count = (embeddings.get("statistics") or {}).get("token_count")
            if isinstance(count, (int, float)):
                tokens = (tokens or 0) + int(count)
        return shape.embeddings(facts, vectors, tokens)


GOOGLE_CHAT = GeminiChat(GEMINI_API)
VERTEX_CHAT = GeminiChat(VERTEX)
GOOGLE_EMBED = GeminiEmbed()
VERTEX_EMBED = VertexEmbed()
