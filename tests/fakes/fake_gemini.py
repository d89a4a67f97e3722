"""The fake Gemini API and Vertex AI (Google's models): generateContent, SSE streams and embeddings.

Paths (what the real services serve)::

    /v1beta/models/{model}:generateContent | :streamGenerateContent | :embedContent | :batchEmbedContents
    /v1/projects/{p}/locations/{r}/publishers/google/models/{model}:generateContent | :streamGenerateContent | :predict

Requests are validated the way Google validates them (unknown fields, empty parts, roles other than
user/model, function responses that do not answer the calls of the turn before...), and refused with
Google's error shape ``{"error": {"code", "message", "status"}}``. Control headers on top of provider.py's:

- ``x-fake-tool-call: <name>`` — answer with a functionCall of that tool (when tools are declared and the
  last turn is not the functions' responses); mode ANY in toolConfig does the same with the first allowed tool.
- ``x-fake-finish-reason: SAFETY`` — end the candidate with this finishReason.
- ``x-fake-block: SAFETY`` — block the prompt: promptFeedback.blockReason and no candidates.
- ``x-fake-stream-error: 1`` — a streamed answer breaks after its first event with an ``error`` event.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

from tests.fakes.native import route
from tests.fakes.provider import _Answer, _bearer_token, _Context, _json_answer, _json_object, _sse_answer, _vector

GEMINI_TEXT = "Hello from fake gemini"
DIMENSIONS = 8  # embeddings are this long unless outputDimensionality says otherwise
_GEMINI = r"/v1beta/models/(?P<model>[^/:]+)"
_VERTEX = r"/v1/projects/(?P<project>[^/:]+)/locations/(?P<region>[^/:]+)/publishers/google/models/(?P<model>[^/:]+)"

# The fields Google's JSON parser knows, per message (either spelling is accepted, as protobuf JSON does).
_REQUEST = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings",
            "cachedContent", "labels", "model"}
_CONTENT = {"role", "parts"}
_PART = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
         "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata"}
_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult")
_GENERATION = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
               "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
               "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
               "thinkingConfig", "mediaResolution"}
_SCHEMA = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
           "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
           "propertyOrdering", "default", "items", "minimum", "maximum"}
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_TOOL = {"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"}
_DECLARATION = {"name", "description", "parameters", "parametersJsonSchema", "response", "behavior"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"}
_FREE = {"args", "response", "example", "default", "labels", "parametersJsonSchema",
         "responseJsonSchema"}  # Structs and maps: their keys are the caller's, not field names


class _Refused(Exception):
    """Google refuses the request."""

    def __init__(self, message: str, code: int = 400, status: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def google_error(code: int, status: str, message: str) -> _Answer:
    """Return an error in Google's shape."""
    return _json_answer(code, {"error": {"code": code, "message": message, "status": status}})


# --------------------------------------------------------------------------- routes


@route("POST", _GEMINI + ":generateContent")
def _gemini_generate(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _generate(ctx, match["model"], vertex=False, stream=False)


@route("POST", _GEMINI + ":streamGenerateContent")
def _gemini_stream(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _generate(ctx, match["model"], vertex=False, stream=True)


@route("POST", _VERTEX + ":generateContent")
def _vertex_generate(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _generate(ctx, match["model"], vertex=True, stream=False)


@route("POST", _VERTEX + ":streamGenerateContent")
def _vertex_stream(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _generate(ctx, match["model"], vertex=True, stream=True)


@route("POST", _GEMINI + ":embedContent")
def _gemini_embed(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _guarded(ctx, False, lambda payload: _embed_one(payload))


@route("POST", _GEMINI + ":batchEmbedContents")
def _gemini_batch_embed(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _guarded(ctx, False, lambda payload: _embed_batch(payload, match["model"]))


@route("POST", _VERTEX + ":predict")
def _vertex_predict(ctx: _Context, match: re.Match[str]) -> _Answer:
    return _guarded(ctx, True, _predict)


def _guarded(ctx: _Context, vertex: bool, answer: Any) -> _Answer:
    """Authenticate, parse and validate, then answer; a refusal becomes Google's error."""
    try:
        _authenticate(ctx, vertex)
        result: _Answer = answer(_payload(ctx))
        return result
    except _Refused as refused:
        return google_error(refused.code, refused.status, str(refused))


def _authenticate(ctx: _Context, vertex: bool) -> None:
    headers = ctx.request.headers
    if vertex:
        if not _bearer_token(headers):
            raise _Refused("Request is missing required authentication credential. Expected OAuth 2 access token, "
                           "login cookie or other valid authentication credential. See https://developers.google.com/"
                           "identity/sign-in/web/devconsole-project.", 401, "UNAUTHENTICATED")
        return
    key = headers.get("x-goog-api-key") or _query_key(ctx.request.query)
    if not key:
        raise _Refused("Method doesn't allow unregistered callers (callers without established identity). Please "
                       "use API Key or other form of API consumer identity to call this API.", 403,
                       "PERMISSION_DENIED")
    if key.startswith("invalid"):
        raise _Refused("API key not valid. Please pass a valid API key.")


def _query_key(query: str) -> str:
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "key":
            return value
    return ""


def _payload(ctx: _Context) -> dict[str, Any]:
    payload = _json_object(ctx.request.body)
    if payload is None:
        raise _Refused("Invalid JSON payload received. Expected an object.")
    normalized: dict[str, Any] = _camel_keys(payload)
    return normalized


def _camel_keys(value: Any) -> Any:
    """Return the value with snake_case field names in lowerCamelCase (protobuf JSON takes both)."""
    if isinstance(value, list):
        return [_camel_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {}
    for key, item in value.items():
        name = _camel(key)
        if name == "properties" and isinstance(item, dict):
            result[name] = {prop: _camel_keys(schema) for prop, schema in item.items()}  # names are the caller's
        elif name in _FREE:
            result[name] = item  # a Struct or a map: its keys are the caller's
        else:
            result[name] = _camel_keys(item)
    return result


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _unknown(payload: dict[str, Any], known: set[str], where: str) -> None:
    for key in payload:
        if key not in known:
            at = f" at '{where}'" if where else ""
            raise _Refused(f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')


# --------------------------------------------------------------------------- generateContent validation


def _validate(payload: dict[str, Any]) -> None:
    """Raise _Refused for what Google refuses in a GenerateContentRequest."""
    _unknown(payload, _REQUEST, "")
    contents = payload.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Refused("* GenerateContentRequest.contents: contents is not specified\n")
    previous: dict[str, Any] | None = None
    for index, content in enumerate(contents):
        if not isinstance(content, dict):
            raise _Refused(f"Invalid value at 'contents[{index}]': expected an object")
        _content(content, f"contents[{index}]")
        _turn_order(content, previous)
        previous = content
    system = payload.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            raise _Refused("Invalid value at 'system_instruction': expected an object")
        _content(system, "system_instruction", any_role=True)
    config = payload.get("generationConfig")
    if config is not None:
        _generation(config)
    for index, tool in enumerate(payload.get("tools") or []):
        _tool(tool, index)
    tool_config = payload.get("toolConfig")
    if tool_config is not None:
        calling = tool_config.get("functionCallingConfig") or {}
        mode = calling.get("mode", "AUTO")
        if mode not in _MODES:
            raise _Refused(f"Invalid value at 'tool_config.function_calling_config.mode' "
                           f"(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "
                           f"\"{mode}\"")
        if calling.get("allowedFunctionNames") and mode not in ("ANY", "VALIDATED"):
            raise _Refused("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                           "allowed_function_names can only be set when mode is ANY or VALIDATED.\n")


def _content(content: dict[str, Any], where: str, any_role: bool = False) -> None:
    _unknown(content, _CONTENT, where)
    role = content.get("role")
    if not any_role and role is not None and role not in ("user", "model"):
        raise _Refused("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _Refused(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
    for index, part in enumerate(parts):
        at = f"{where}.parts[{index}]"
        if not isinstance(part, dict):
            raise _Refused(f"Invalid value at '{at}': expected an object")
        _unknown(part, _PART, at)
        present = [name for name in _PART_DATA if name in part]
        if not present:
            raise _Refused(f"* GenerateContentRequest.{at}.data: required oneof field 'data' must have one "
                           "initialized field\n")
        if len(present) > 1:
            raise _Refused(f"Invalid JSON payload received. Oneof field 'data' is already set. Cannot set "
                           f"'{_snake(present[1])}'")
        if part.get("text") == "":
            raise _Refused("Unable to submit request because it has an empty text parameter. Add a value to the "
                           "parameter and try again.")
        _part_data(part, at)


def _part_data(part: dict[str, Any], at: str) -> None:
    inline = part.get("inlineData")
    if inline is not None:
        if not inline.get("mimeType"):
            raise _Refused(f"* GenerateContentRequest.{at}.inline_data.mime_type: mime_type is not specified\n")
        try:
            base64.b64decode(inline.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(f"Invalid value at '{at}.inline_data.data' (TYPE_BYTES), Base64 decoding failed") from None
    file_data = part.get("fileData")
    if file_data is not None and not file_data.get("fileUri"):
        raise _Refused(f"* GenerateContentRequest.{at}.file_data.file_uri: file_uri is not specified\n")
    for name in ("functionCall", "functionResponse"):
        value = part.get(name)
        if value is not None and not value.get("name"):
            raise _Refused(f"* GenerateContentRequest.{at}.{_snake(name)}.name: Name cannot be empty.\n")
    response = part.get("functionResponse")
    if response is not None and not isinstance(response.get("response"), dict):
        raise _Refused(f"Invalid value at '{at}.function_response.response' (type.googleapis.com/"
                       "google.protobuf.Struct), expected an object")


def _turn_order(content: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Refuse calls and responses out of place, as Gemini does."""
    parts = content["parts"]
    responses = sum(1 for part in parts if "functionResponse" in part)
    calls = sum(1 for part in parts if "functionCall" in part)
    before = previous["parts"] if previous else []
    if calls and previous is not None and previous.get("role") == "model":
        raise _Refused("Please ensure that function call turn comes immediately after a user turn or after a "
                       "function response turn.")
    if responses:
        asked = sum(1 for part in before if "functionCall" in part)
        if not previous or previous.get("role") != "model" or asked != responses:
            raise _Refused("Please ensure that the number of function response parts is equal to the number of "
                           "function call parts of the function call turn.")


def _generation(config: Any) -> None:
    if not isinstance(config, dict):
        raise _Refused("Invalid value at 'generation_config': expected an object")
    _unknown(config, _GENERATION, "generation_config")
    for name in ("candidateCount", "maxOutputTokens", "topK", "seed"):
        if name in config and (not isinstance(config[name], int) or isinstance(config[name], bool)):
            raise _Refused(f"Invalid value at 'generation_config.{_snake(name)}' (TYPE_INT32), {config[name]!r}")
    if config.get("candidateCount", 1) < 1:
        raise _Refused("* GenerateContentRequest.generation_config.candidate_count: must be positive\n")
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        _unknown(thinking, {"thinkingBudget", "thinkingLevel", "includeThoughts"}, "generation_config.thinking_config")
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise _Refused("You cannot set both thinking_level and the legacy thinking_budget parameter.")
    temperature = config.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
        raise _Refused("Unable to submit request because it has a temperature value outside the supported range "
                       "of 0 to 2.")
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
        raise _Refused("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences\n")
    if "responseSchema" in config:
        if config.get("responseMimeType") != "application/json":
            raise _Refused("* GenerateContentRequest.generation_config.response_mime_type: must be application/json "
                           "when response_schema is set\n")
        _schema(config["responseSchema"], "generation_config.response_schema")


def _schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _Refused(f"Invalid value at '{where}': expected an object")
    _unknown(schema, _SCHEMA, where)
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in _TYPES):
        raise _Refused(f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta."
                       f"Type), {json.dumps(kind)}")
    properties = schema.get("properties")
    if isinstance(kind, str) and kind.upper() == "OBJECT" and "properties" in schema and not properties:
        raise _Refused(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type\n")
    for name, value in (properties or {}).items():
        _schema(value, f"{where}.properties[{name}].value")
    if "items" in schema:
        _schema(schema["items"], f"{where}.items")
    for index, option in enumerate(schema.get("anyOf") or []):
        _schema(option, f"{where}.any_of[{index}]")


def _tool(tool: Any, index: int) -> None:
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise _Refused(f"Invalid value at '{where}': expected an object")
    _unknown(tool, _TOOL, where)
    for number, declaration in enumerate(tool.get("functionDeclarations") or []):
        at = f"{where}.function_declarations[{number}]"
        _unknown(declaration, _DECLARATION, at)
        if not declaration.get("name"):
            raise _Refused(f"* GenerateContentRequest.{at}.name: Name cannot be empty.\n")
        parameters = declaration.get("parameters")
        if parameters is not None:
            _schema(parameters, f"{at}.parameters")
            if str(parameters.get("type", "")).upper() == "OBJECT" and not parameters.get("properties"):
                raise _Refused(f"* GenerateContentRequest.{at}.parameters.properties: should be non-empty for "
                               "OBJECT type\n")


# --------------------------------------------------------------------------- generateContent answers


def _generate(ctx: _Context, model: str, vertex: bool, stream: bool) -> _Answer:
    try:
        _authenticate(ctx, vertex)
        payload = _payload(ctx)
        _validate(payload)
    except _Refused as refused:
        return google_error(refused.code, refused.status, str(refused))
    headers = ctx.request.headers
    usage = {"promptTokenCount": _tokens(payload.get("contents"), payload.get("systemInstruction"))}
    base = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
    block = headers.get("x-fake-block")
    if block:
        answer = {"promptFeedback": {"blockReason": block}, "usageMetadata": {**usage, "totalTokenCount":
                                                                                  usage["promptTokenCount"]}, **base}
        return _sse_answer([_event(answer)], 0, ctx.wait) if stream else _json_answer(200, answer)
    config = payload.get("generationConfig") or {}
    count = config.get("candidateCount", 1)
    call = _forced_call(payload, headers.get("x-fake-tool-call"))
    if call is not None:
        pieces: list[dict[str, Any]] = [{"functionCall": call}]
        finish = "STOP"
    else:
        pieces, finish = _text_pieces(payload, config)
    finish = headers.get("x-fake-finish-reason") or finish
    if not stream:
        return _json_answer(200, _response(pieces, finish, count, usage, base, last=True))
    if "alt=sse" not in ctx.request.query.split("&"):
        # Without alt=sse Google streams one JSON array of responses.
        whole = [_response([piece], finish, count, usage, base, last=i == len(pieces) - 1)
                 for i, piece in enumerate(pieces)]
        return _json_answer(200, whole)
    events = [_event(_response([piece], finish, count, usage, base, last=i == len(pieces) - 1))
              for i, piece in enumerate(pieces)]
    if headers.get("x-fake-stream-error"):
        events = events[:1] + [_event({"error": {"code": 503, "message": "The model is overloaded. Please try "
                                                 "again later.", "status": "UNAVAILABLE"}})]
    return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)


def _event(payload: Any) -> bytes:
    # Google separates its server-sent events with CRLF.
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\r\n\r\n"


def _response(parts: list[dict[str, Any]], finish: str, count: int, usage: dict[str, int], base: dict[str, Any],
              *, last: bool) -> dict[str, Any]:
    completion = sum(_tokens(part) for part in parts)
    candidates = []
    for index in range(count):
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
        if last:
            candidate["finishReason"] = finish
        candidates.append(candidate)
    meta = {**usage, "candidatesTokenCount": completion * count,
            "totalTokenCount": usage["promptTokenCount"] + completion * count}
    return {"candidates": candidates, "usageMetadata": meta, **base}


def _tokens(*values: Any) -> int:
    return max(1, len(json.dumps([v for v in values if v is not None])) // 4)


def _text_pieces(payload: dict[str, Any], config: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Return the answer's text as word pieces, and its finishReason (MAX_TOKENS when cut)."""
    last = payload["contents"][-1]["parts"]
    answered = [part["functionResponse"] for part in last if "functionResponse" in part]
    if answered:
        text = "Fake gemini read " + "; ".join(f"{r['name']}: {json.dumps(r['response'])}" for r in answered)
    elif config.get("responseMimeType") == "application/json":
        text = json.dumps({"text": GEMINI_TEXT})
    else:
        text = GEMINI_TEXT
    words = text.split(" ")
    limit = config.get("maxOutputTokens")
    finish = "STOP"
    if isinstance(limit, int) and limit < len(words):
        words, finish = words[:limit], "MAX_TOKENS"
    pieces = [{"text": word if i == 0 else " " + word} for i, word in enumerate(words)]
    return pieces, finish


def _forced_call(payload: dict[str, Any], header: str | None) -> dict[str, Any] | None:
    """Return the functionCall to answer with, or None for a text answer."""
    declarations = [d for tool in payload.get("tools") or [] for d in tool.get("functionDeclarations") or []]
    if not declarations:
        return None
    calling = (payload.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = calling.get("mode", "AUTO")
    answered = any("functionResponse" in part for part in payload["contents"][-1]["parts"])
    if mode == "NONE" or (mode != "ANY" and (not header or answered)):
        return None
    name = header or (calling.get("allowedFunctionNames") or [declarations[0]["name"]])[0]
    declaration = next((d for d in declarations if d["name"] == name), None)
    if declaration is None:
        return None
    return {"name": name, "args": _example(declaration.get("parameters") or {})}


def _example(schema: dict[str, Any]) -> Any:
    """Return a value that fits a schema: the arguments of a fake call."""
    kind = str(schema.get("type", "OBJECT")).upper()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "OBJECT":
        properties = schema.get("properties") or {}
        wanted = schema.get("required") or list(properties)
        return {name: _example(properties[name]) for name in wanted if name in properties}
    return {"STRING": "fake", "NUMBER": 1.5, "INTEGER": 1, "BOOLEAN": True, "ARRAY": []}.get(kind)


# --------------------------------------------------------------------------- embeddings


def _embed_one(payload: dict[str, Any]) -> _Answer:
    _unknown(payload, {"model", "content", "taskType", "title", "outputDimensionality"}, "")
    return _json_answer(200, {"embedding": {"values": _embedding(payload, "EmbedContentRequest")}})


def _embed_batch(payload: dict[str, Any], model: str) -> _Answer:
    _unknown(payload, {"requests"}, "")
    requests = payload.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _Refused("* BatchEmbedContentsRequest.requests: requests is not specified\n")
    values = []
    for index, request in enumerate(requests):
        where = f"requests[{index}]"
        _unknown(request, {"model", "content", "taskType", "title", "outputDimensionality"}, where)
        if request.get("model") != f"models/{model}":
            raise _Refused(f"* BatchEmbedContentsRequest.{where}.model: the model of each request must be the "
                           f"batch's, models/{model}\n")
        values.append({"values": _embedding(request, f"BatchEmbedContentsRequest.{where}")})
    return _json_answer(200, {"embeddings": values})


def _embedding(request: dict[str, Any], where: str) -> list[float]:
    content = request.get("content")
    if not isinstance(content, dict) or not content.get("parts"):
        raise _Refused(f"* {where}.content: content is not specified\n")
    text = "".join(part.get("text", "") for part in content["parts"] if isinstance(part, dict))
    return _vector(text, int(request.get("outputDimensionality") or DIMENSIONS))


def _predict(payload: dict[str, Any]) -> _Answer:
    _unknown(payload, {"instances", "parameters"}, "")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise _Refused("Request contains an invalid argument: instances must be a non-empty list.")
    parameters = payload.get("parameters") or {}
    dimensions = int(parameters.get("outputDimensionality") or DIMENSIONS)
    predictions = []
    characters = 0
    for instance in instances:
        text = instance.get("content") if isinstance(instance, dict) else None
        if not isinstance(text, str):
            raise _Refused("Request contains an invalid argument: each instance needs a string content.")
        characters += len(text)
        predictions.append({"embeddings": {"statistics": {"truncated": False, "token_count": len(text.split())},
                                           "values": _vector(text, dimensions)}})
    return _json_answer(200, {"predictions": predictions, "metadata": {"billableCharacterCount": characters}})
