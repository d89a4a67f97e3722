"""Cohere API v2 on the fake provider: POST /v2/chat and POST /v2/embed.

Requests are validated as the real API validates them, with its error shape ``{"message": ...}``
and its statuses (401 without a key, 400 for a body it refuses; messages from Cohere's error
reference where it lists one). Answers follow the documented examples: a text reply, or tool
calls when tools are given with tool_choice REQUIRED or the ``x-fake-tool-call: <name>`` control
header names one; streams are Cohere's named SSE events, ending with ``data: [DONE]``.

Other controls: ``x-fake-stream-error: <message>`` ends a stream with an ERROR message-end after
its first text piece; ``x-fake-events`` sets the number of streamed text pieces.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import struct
import uuid
from typing import Any

from tests.fakes.native import route
from tests.fakes.provider import (
    _STREAM_PIECES,
    _Answer,
    _bearer_token,
    _Context,
    _json_answer,
    _json_object,
    _sse_answer,
    _token_estimate,
    _vector,
)

COHERE_TEXT = "Hello from fake cohere"
THINKING_TEXT = "The user greets me; I greet back."
PREAMBLE_TOKENS = 64  # Cohere's raw token counts include a preamble that billed units leave out
MISSING_MODEL = "a model parameter is required for this endpoint."
NO_KEY = "no api key supplied"

_CHAT_FIELDS = frozenset({
    "stream", "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
    "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty",
    "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority",
})
_EMBED_FIELDS = frozenset({"texts", "images", "model", "input_type", "inputs", "max_tokens", "output_dimension",
                           "embedding_types", "truncate", "priority"})
_ROLES = ("user", "assistant", "system", "tool")
_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Refused(Exception):
    """The real API would refuse this request: the status and Cohere's message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> _Answer:
    return _json_answer(status, {"id": str(uuid.uuid4()), "message": message})


def _payload(ctx: _Context) -> dict[str, Any]:
    """Return the JSON body of an authenticated request, or raise what Cohere answers instead."""
    if not _bearer_token(ctx.request.headers):
        raise _Refused(NO_KEY, 401)
    payload = _json_object(ctx.request.body)
    if payload is None:
        raise _Refused("invalid json syntax: the body must be a JSON object")
    return payload


# --------------------------------------------------------------------------- chat


@route("POST", r"/v2/chat")
def chat(ctx: _Context, match: re.Match[str]) -> _Answer:
    """Answer POST /v2/chat like Cohere: a text reply, tool calls, or the stream of either."""
    try:
        payload = _payload(ctx)
        _check_chat(payload)
    except _Refused as refused:
        return _error(refused.status, refused.message)
    messages = payload["messages"]
    billed_in = _token_estimate(messages)
    call = _tool_to_call(ctx, payload)
    if payload.get("stream"):
        return _chat_stream(ctx, payload, call, billed_in)
    reply: dict[str, Any] = {"role": "assistant"}
    if call is not None:
        reply["tool_plan"] = f"I will use the {call['function']['name']} tool."
        reply["tool_calls"] = [call]
        finish, out = "TOOL_CALL", 12
    else:
        text, finish = _text(payload)
        content = [{"type": "text", "text": text}]
        if (payload.get("thinking") or {}).get("type") == "enabled":
            content.insert(0, {"type": "thinking", "thinking": THINKING_TEXT})
        reply["content"] = content
        out = len(text.split())
    answer: dict[str, Any] = {"id": str(uuid.uuid4()), "message": reply, "finish_reason": finish,
                              "usage": _usage(billed_in, out)}
    if payload.get("logprobs") and call is None:
        answer["logprobs"] = [_logprob(i, word) for i, word in enumerate(reply["content"][-1]["text"].split(" "))]
    return _json_answer(200, answer)


def _check_chat(payload: dict[str, Any]) -> None:
    """Raise what Cohere answers a chat body it refuses with."""
    unknown = sorted(set(payload) - _CHAT_FIELDS)
    if unknown:
        raise _Refused(f"invalid request: unknown field '{unknown[0]}'")
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise _Refused(MISSING_MODEL)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refused("invalid request: messages must contain at least one message")
    _check_messages(messages)
    tools = payload.get("tools")
    if tools is not None:
        _check_tools(tools)
    choice = payload.get("tool_choice")
    if choice is not None and choice not in ("REQUIRED", "NONE"):
        raise _Refused(f"invalid request: tool_choice must be one of REQUIRED, NONE - received {choice!r}")
    if choice == "REQUIRED" and not tools:
        raise _Refused("invalid request: tool_choice REQUIRED needs tools to be specified")
    _check_range(payload, "temperature", 0, 1, "invalid request: temperature must be between 0 and 1.0 inclusive.")
    _check_range(payload, "p", 0.01, 0.99, "invalid request: p must be between 0.01 and 0.99 inclusive.")
    _check_range(payload, "k", 0, 500, "invalid request: k must be between 0 and 500 inclusive.")
    for name in ("frequency_penalty", "presence_penalty"):
        _check_range(payload, name, 0, 1, f"invalid request: {name} must be between 0 and 1 inclusive.")
    stops = payload.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5
                              or not all(isinstance(s, str) for s in stops)):
        raise _Refused("invalid request: stop_sequences must be a list of at most 5 strings")
    _check_response_format(payload.get("response_format"))


def _check_range(payload: dict[str, Any], name: str, low: float, high: float, message: str) -> None:
    value = payload.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not low <= value <= high):
        raise _Refused(message)


def _check_messages(messages: list[Any]) -> None:
    called: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise _Refused(f"invalid request: invalid role {role!r} in messages at index {i}. "
                           "Role must be one of the following: user, assistant, system, tool")
        content = message.get("content")
        if role == "user":
            _check_content(content, i, ("text", "image_url"), required=True)
        elif role == "system":
            _check_content(content, i, ("text",), required=True)
        elif role == "assistant":
            _check_content(content, i, ("text", "thinking"), required=False)
            for call in message.get("tool_calls") or []:
                if not isinstance(call, dict) or call.get("type") != "function":
                    raise _Refused("tool call must be of type function")
                if not call.get("id") or not (call.get("function") or {}).get("name"):
                    raise _Refused(f"invalid request: tool calls in messages at index {i} need an id and a name")
                if call["id"] in called:
                    raise _Refused("cannot have duplicate tool ids")
                called.add(call["id"])
        else:
            if not message.get("tool_call_id"):
                raise _Refused("tool call id must be provided with tool message")
            if message["tool_call_id"] not in called:
                raise _Refused("tool call id not found in previous tool calls")
            _check_content(content, i, ("text", "document"), required=True)


def _check_content(content: Any, i: int, kinds: tuple[str, ...], *, required: bool) -> None:
    if content is None and not required:
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Refused(f"invalid request: content of messages at index {i} must be a string or a list")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise _Refused(f"invalid request: content type {kind!r} is not allowed in messages at index {i}")
        if kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not url.startswith(("data:image/", "http://", "https://")):
                raise _Refused("invalid request: image_url.url must be a data URI or a web URL")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _Refused("invalid request: tools must be a list")
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise _Refused("invalid request: tools must be of type function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise _Refused("invalid request: tool names can only contain certain characters (A-Za-z0-9_) and "
                           f"can't begin with a digit (provided name: '{name}').")
        if not isinstance(function.get("parameters"), dict):
            raise _Refused(f"invalid request: tool '{name}' must have parameters")
        if set(function) - {"name", "description", "parameters"}:
            raise _Refused(f"invalid request: unknown field in tool '{name}'")


def _check_response_format(value: Any) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object"):
        raise _Refused("invalid request: response_format type must be one of text, json_object")
    if kind == "text" and "json_schema" in value:
        raise _Refused("invalid request: json_schema must not be specified when response_format type is text")


def _tool_to_call(ctx: _Context, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Return the tool call this turn makes; none once the last message brings tool results."""
    if payload["messages"][-1].get("role") == "tool" or payload.get("tool_choice") == "NONE":
        return None
    tools = {tool["function"]["name"]: tool["function"] for tool in payload.get("tools") or []}
    name = ctx.request.headers.get("x-fake-tool-call")
    if not name and payload.get("tool_choice") == "REQUIRED":
        name = next(iter(tools))
    if not name:
        return None
    arguments = {prop: _example(schema) for prop, schema
                 in ((tools.get(name) or {}).get("parameters") or {}).get("properties", {}).items()}
    return {"id": f"{name}_{secrets.token_hex(6)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def _example(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(str(kind), "fake")


def _text(payload: dict[str, Any]) -> tuple[str, str]:
    """Return the reply text and finish reason: tool results are echoed, stops and max_tokens obeyed."""
    last = payload["messages"][-1]
    if last.get("role") == "tool":
        text = f"The tool said: {_plain(last.get('content'))}"
    elif (payload.get("response_format") or {}).get("type") == "json_object":
        text = json.dumps({"answer": COHERE_TEXT})
    else:
        text = COHERE_TEXT
    for stop in payload.get("stop_sequences") or []:
        if stop and stop in text:
            return text[:text.index(stop)], "STOP_SEQUENCE"
    limit = payload.get("max_tokens")
    words = text.split(" ")
    if isinstance(limit, int) and limit < len(words):
        return " ".join(words[:limit]), "MAX_TOKENS"
    return text, "COMPLETE"


def _plain(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _usage(billed_in: int, out: int) -> dict[str, Any]:
    return {"billed_units": {"input_tokens": billed_in, "output_tokens": out},
            "tokens": {"input_tokens": billed_in + PREAMBLE_TOKENS, "output_tokens": out}}


def _logprob(i: int, word: str) -> dict[str, Any]:
    return {"text": word if i == 0 else f" {word}", "token_ids": [1000 + i], "logprobs": [-0.25]}


def _event(kind: str, **fields: Any) -> bytes:
    """Return one Cohere stream event: named, with the type inside the data too."""
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **fields}).encode() + b"\n\n"


def _chat_stream(ctx: _Context, payload: dict[str, Any], call: dict[str, Any] | None, billed_in: int) -> _Answer:
    """Stream the reply as Cohere's v2 events, message-start to message-end, then [DONE]."""
    events = [_event("message-start", id=str(uuid.uuid4()), delta={"message": {"role": "assistant"}})]
    failure = ctx.request.headers.get("x-fake-stream-error")
    if call is not None:
        name = call["function"]["name"]
        for piece in ("I will use", f" the {name}", " tool."):
            events.append(_event("tool-plan-delta", delta={"message": {"tool_plan": piece}}))
        start = {**call, "function": {"name": name, "arguments": ""}}
        events.append(_event("tool-call-start", index=0, delta={"message": {"tool_calls": start}}))
        arguments = call["function"]["arguments"]
        third = max(1, len(arguments) // 3)
        for piece in filter(None, (arguments[:third], arguments[third:2 * third], arguments[2 * third:])):
            events.append(_event("tool-call-delta", index=0,
                                 delta={"message": {"tool_calls": {"function": {"arguments": piece}}}}))
        events.append(_event("tool-call-end", index=0))
        finish, out = "TOOL_CALL", 12
    else:
        pieces = [_STREAM_PIECES[i % len(_STREAM_PIECES)] for i in range(ctx.controls.events)]
        if payload["messages"][-1].get("role") == "tool":
            pieces = _text(payload)[0].split(" ")
            pieces = [pieces[0], *(f" {piece}" for piece in pieces[1:])]
        events.append(_event("content-start", index=0,
                             delta={"message": {"content": {"type": "text", "text": ""}}}))
        for i, piece in enumerate(pieces):
            fields: dict[str, Any] = {"index": 0, "delta": {"message": {"content": {"text": piece}}}}
            if payload.get("logprobs"):
                fields["logprobs"] = {"text": piece, "token_ids": [1000 + i], "logprobs": [-0.25]}
            events.append(_event("content-delta", **fields))
            if failure:
                events.append(_event("message-end", delta={"finish_reason": "ERROR", "error": failure}))
                events.append(b"data: [DONE]\n\n")
                return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)
        events.append(_event("content-end", index=0))
        finish, out = "COMPLETE", len(pieces)
    events.append(_event("message-end", delta={"finish_reason": finish, "usage": _usage(billed_in, out)}))
    events.append(b"data: [DONE]\n\n")
    return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)


# --------------------------------------------------------------------------- embed


@route("POST", r"/v2/embed")
def embed(ctx: _Context, match: re.Match[str]) -> _Answer:
    """Answer POST /v2/embed like Cohere, with deterministic vectors of the model's size."""
    try:
        payload = _payload(ctx)
        texts, dimensions = _check_embed(payload)
    except _Refused as refused:
        return _error(refused.status, refused.message)
    vectors = [_vector(text, dimensions) for text in texts]
    embeddings: dict[str, Any] = {}
    for kind in payload["embedding_types"]:
        embeddings[kind] = _encoded(kind, vectors)
    return _json_answer(200, {
        "id": str(uuid.uuid4()), "texts": texts, "embeddings": embeddings, "response_type": "embeddings_by_type",
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": _token_estimate(texts)}},
    })


def _check_embed(payload: dict[str, Any]) -> tuple[list[str], int]:
    """Return the texts and vector size of a body Cohere accepts; raise what it answers otherwise."""
    unknown = sorted(set(payload) - _EMBED_FIELDS)
    if unknown:
        raise _Refused(f"invalid request: unknown field '{unknown[0]}'")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _Refused(MISSING_MODEL)
    kinds = payload.get("embedding_types")
    if not kinds:
        raise _Refused("embedding_types parameter is required")
    if not isinstance(kinds, list) or any(kind not in _EMBEDDING_TYPES for kind in kinds):
        raise _Refused("invalid request: embedding_types must be a list of float, int8, uint8, binary, "
                       "ubinary, base64")
    older = re.search(r"-v2(\.\d+)?$", model) is not None  # before v3, input_type was optional
    if payload.get("input_type") not in _INPUT_TYPES and not (older and payload.get("input_type") is None):
        raise _Refused("invalid request: valid input_type must be provided with the provided model")
    texts = payload.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise _Refused("invalid request: texts must be a non-empty list of strings")
    if len(texts) > 96:
        raise _Refused(f"invalid request: total number of texts must be at most 96 - received {len(texts)}")
    for i, text in enumerate(texts):
        if not text:
            raise _Refused(f"invalid request: inputs contains an element that is the empty string at index {i}")
    dimensions = 1536 if model.startswith("embed-v4") else 1024
    output = payload.get("output_dimension")
    if output is not None:
        if not model.startswith("embed-v4"):
            raise _Refused("invalid request: output_dimension is only supported by embed-v4.0 and newer models")
        if output not in (256, 512, 1024, 1536):
            raise _Refused("invalid request: output_dimension must be one of 256, 512, 1024, 1536")
        dimensions = output
    return texts, dimensions


def _encoded(kind: str, vectors: list[list[float]]) -> list[Any]:
    """Return the vectors as one of Cohere's embedding types."""
    if kind == "float":
        return vectors
    if kind == "base64":  # the float32 bytes of each vector, base64-encoded
        return [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
    if kind in ("int8", "binary"):
        return [[round(x * 127) for x in v] for v in vectors]
    return [[round((x + 1) * 127.5) for x in v] for v in vectors]  # uint8, ubinary
