"""Cohere API v2: /v1/chat/completions as POST /v2/chat, /v1/embeddings as POST /v2/embed.

Cohere's base URL ends in /v1 while these endpoints live under /v2, so the native paths start
at the host's root (NativeRequest.from_root). Field by field choices: docs/translation/cohere.md.
"""

from __future__ import annotations

import logging
from typing import Any

from app.errors import BadRequest, UpstreamUnreachable
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.errors import event_error
from app.translate.sse import SSEReader, json_data

log = logging.getLogger(__name__)

SLUG = "cohere"
CHAT_PATH = "/v2/chat"
EMBED_PATH = "/v2/embed"
DEFAULT_INPUT_TYPE = "search_document"  # what an OpenAI embeddings call means when it says nothing

# Cohere finish reasons → unified ones. ERROR is not here: it is a failure, not an end (see _failed).
FINISH = {
    "COMPLETE": shape.STOP, "STOP_SEQUENCE": shape.STOP, "MAX_TOKENS": shape.LENGTH,
    "TIMEOUT": shape.LENGTH,  # cut short by Cohere's time limit: an incomplete answer, like a length stop
    "TOOL_CALL": shape.TOOL_CALLS, "ERROR_TOXIC": shape.CONTENT_FILTER, "ERROR_LIMIT": shape.LENGTH,
}
# Cohere's own chat fields, sent on as they are when a client adds them to an OpenAI body.
_CHAT_NATIVE = ("documents", "citation_options", "safety_mode", "thinking", "priority", "k")
_CHAT_MAPPED = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "seed", "frequency_penalty", "presence_penalty", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs", "strict_tools",
})
_EMBED_NATIVE = ("truncate", "priority", "max_tokens")
_EMBED_MAPPED = frozenset({"model", "input", "input_type", "dimensions", "encoding_format"})
_P_MIN, _P_MAX = 0.01, 0.99  # Cohere's bounds for p (top_p); OpenAI's 1.0 ("no nucleus cut") is sent as 0.99


# --------------------------------------------------------------------------- chat: request


class CohereChat:
    """Translates /v1/chat/completions to and from Cohere's /v2/chat."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
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

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a /v2/chat answer."""
        if not isinstance(native, dict) or not isinstance(native.get("message"), dict):
            raise UpstreamUnreachable("cohere answered with JSON that is not a chat response")
        finish = native.get("finish_reason")
        if finish == "ERROR":
            raise UpstreamUnreachable("cohere error: the generation failed (finish_reason ERROR)")
        message = native["message"]
        parts = message.get("content") if isinstance(message.get("content"), list) else []
        text = (_str(message.get("tool_plan")) or "") + "".join(
            _str(part.get("text")) or "" for part in parts if isinstance(part, dict) and part.get("type") == "text")
        calls = [shape.tool_call(_str(call.get("id")) or f"call_{i}", _str(_fn(call).get("name")) or "",
                                 _str(_fn(call).get("arguments")) or "{}")
                 for i, call in enumerate(message.get("tool_calls") or []) if isinstance(call, dict)]
        unified = shape.message(text or (None if calls else ""), calls)
        if not facts.strict:
            thinking = "".join(_str(part.get("thinking")) or "" for part in parts
                               if isinstance(part, dict) and part.get("type") == "thinking")
            if thinking:
                unified["reasoning_content"] = thinking
            if message.get("citations"):
                unified["citations"] = message["citations"]
        result = shape.completion(facts, unified, FINISH.get(str(finish), shape.STOP), usage(native.get("usage")))
        if isinstance(native.get("logprobs"), list):
            result["choices"][0]["logprobs"] = {"content": logprobs(native["logprobs"]), "refusal": None}
        return result

    def stream(self, facts: CallFacts) -> CohereChunks:
        """Return a parser of one /v2/chat event stream."""
        return CohereChunks(facts)


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
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        native["max_tokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        native["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        native["stop_sequences"] = stop


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


# --------------------------------------------------------------------------- chat: answers


def usage(raw: Any) -> dict[str, Any] | None:
    """Return the unified usage of Cohere's: billed units first (what Cohere charges), raw tokens otherwise."""
    if not isinstance(raw, dict):
        return None
    billed = _dig(raw, "billed_units")
    tokens = _dig(raw, "tokens")
    prompt = _count(billed.get("input_tokens"))
    prompt = _count(tokens.get("input_tokens")) if prompt is None else prompt
    completion = _count(billed.get("output_tokens"))
    completion = _count(tokens.get("output_tokens")) if completion is None else completion
    return shape.usage(prompt, completion, cached_tokens=_count(raw.get("cached_tokens")))


def logprobs(items: list[Any]) -> list[dict[str, Any]]:
    """Return OpenAI logprob entries for Cohere's: one per text piece, its tokens' logprobs summed."""
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        text = _str(item.get("text")) or ""
        values = [v for v in item.get("logprobs") or [] if _number(v)]
        entries.append({"token": text, "logprob": sum(values), "bytes": list(text.encode()), "top_logprobs": []})
    return entries


class CohereChunks:
    """Reads Cohere's /v2/chat event stream into unified chunks, event by event."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.events = SSEReader()
        self.started = False
        self.ended = False
        self.calls: dict[Any, int] = {}  # Cohere's tool-call index → the unified one (0, 1, ... in order)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks these bytes complete."""
        return self._chunks(self.events.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        """Return what a last unterminated event completes; a stream cut before message-end is a failure."""
        chunks = self._chunks(self.events.finish())
        if not self.ended:
            raise UpstreamBroke({"message": "cohere error: the stream ended before message-end",
                                 "type": "api_error", "param": None, "code": None})
        return chunks

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for name, text in events:
            payload = json_data(text)
            if not isinstance(payload, dict) or self.ended:
                continue  # the closing [DONE], or anything after message-end
            kind = payload.get("type") or name
            if kind == "error" or (not kind and "message" in payload):
                raise UpstreamBroke(event_error(SLUG, payload))
            chunks += self._event(str(kind), payload)
        return chunks

    def _event(self, kind: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        message = _dig(payload, "delta", "message")
        if kind == "message-start":
            return self._open()
        if kind == "content-delta":
            return self._content(_dig(message, "content"), payload.get("logprobs"))
        if kind == "tool-plan-delta":
            plan = _str(message.get("tool_plan"))
            return self._delta({"content": plan}) if plan else []
        if kind == "tool-call-start":
            return self._call_start(payload.get("index"), _dig(message, "tool_calls"))
        if kind == "tool-call-delta":
            index = self.calls.setdefault(payload.get("index"), len(self.calls))
            piece = _str(_dig(message, "tool_calls", "function").get("arguments"))
            return self._delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}) if piece else []
        if kind == "message-end":
            return self._end(_dig(payload, "delta"))
        return []  # content-start/-end, tool-call-end, citations, debug: nothing a unified chunk carries

    def _open(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        return [shape.chunk(self.facts, {"role": "assistant", "content": ""})]

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return self._open() + [shape.chunk(self.facts, delta, finish)]

    def _content(self, content: dict[str, Any], item: Any) -> list[dict[str, Any]]:
        text = _str(content.get("text"))
        if text:
            chunks = self._delta({"content": text})
            if isinstance(item, dict):
                chunks[-1]["choices"][0]["logprobs"] = {"content": logprobs([item]), "refusal": None}
            return chunks
        thinking = _str(content.get("thinking"))
        if thinking and not self.facts.strict:
            return self._delta({"reasoning_content": thinking})
        return []

    def _call_start(self, cohere_index: Any, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = self.calls.setdefault(cohere_index, len(self.calls))
        function = _fn(call)
        first = shape.tool_call(_str(call.get("id")) or f"call_{index}", _str(function.get("name")) or "", "",
                                index=index)
        chunks = self._delta({"tool_calls": [first]})
        arguments = _str(function.get("arguments"))
        if arguments:
            chunks.append(shape.chunk(self.facts, {"tool_calls": [{"index": index,
                                                                   "function": {"arguments": arguments}}]}))
        return chunks

    def _end(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        finish = delta.get("finish_reason")
        if delta.get("error") or finish == "ERROR":
            raise UpstreamBroke(event_error(SLUG, {"message": delta.get("error") or "the generation failed"}))
        self.ended = True
        chunks = self._delta({}, FINISH.get(str(finish), shape.STOP))
        reported = usage(delta.get("usage"))
        if reported is not None:
            chunks.append(shape.usage_chunk(self.facts, reported))
        return chunks


# --------------------------------------------------------------------------- embeddings


class CohereEmbed:
    """Translates /v1/embeddings to and from Cohere's /v2/embed."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the /v2/embed request for an OpenAI embeddings body."""
        native: dict[str, Any] = {}
        if body.get("model") is not None:
            native["model"] = body["model"]
        native["texts"] = embed_texts(body.get("input"))
        # Not OpenAI's: a client may say what its texts are for; the default suits stored documents.
        native["input_type"] = body.get("input_type") or DEFAULT_INPUT_TYPE
        encoding = body.get("encoding_format")
        if encoding not in (None, "float", "base64"):
            raise BadRequest("encoding_format must be float or base64")
        # Cohere's base64 is OpenAI's too (the float32 bytes of each vector, base64-encoded).
        native["embedding_types"] = ["base64" if encoding == "base64" else "float"]
        if body.get("dimensions") is not None:
            native["output_dimension"] = body["dimensions"]
        for name in _EMBED_NATIVE:
            if body.get(name) is not None:
                native[name] = body[name]
        _warn_dropped(body, _EMBED_MAPPED | set(_EMBED_NATIVE), EMBED_PATH, set())
        return NativeRequest(EMBED_PATH, native, from_root=True)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for a /v2/embed answer."""
        embeddings = native.get("embeddings") if isinstance(native, dict) else None
        if not isinstance(embeddings, dict):
            raise UpstreamUnreachable("cohere answered with JSON that is not an embed response")
        tokens = _count(_dig(native, "meta", "billed_units").get("input_tokens"))
        floats = embeddings.get("float")
        if isinstance(floats, list):
            return shape.embeddings(facts, floats, tokens)
        encoded = embeddings.get("base64")
        if not isinstance(encoded, list):
            raise UpstreamUnreachable("cohere answered without float or base64 embeddings")
        result = shape.embeddings(facts, [], tokens)
        result["data"] = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)]
        return result


def embed_texts(value: Any) -> list[str]:
    """Return Cohere's texts for an OpenAI input: a string or a list of strings (token arrays cannot be sent)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    if value is None:
        raise BadRequest("input is required")
    raise BadRequest("input: cohere embeds text only; send a string or a list of strings, not token arrays")


# --------------------------------------------------------------------------- helpers


def _warn_dropped(body: dict[str, Any], known: set[str] | frozenset[str], path: str, extra: set[str]) -> None:
    """Log, by name only, the parameters Cohere has no place for."""
    dropped = sorted({name for name, value in body.items() if name not in known and value is not None} | extra)
    if dropped:
        log.warning("cohere %s has no place for %s: dropped", path, ", ".join(dropped))


def _dig(value: Any, *keys: str) -> dict[str, Any]:
    """Return the object at this path, or an empty one when any step is missing."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def _fn(call: Any) -> dict[str, Any]:
    return _dig(call, "function")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> int | None:
    """Return a token count (Cohere sends some as JSON floats)."""
    return int(value) if _number(value) else None


CHAT = CohereChat()
EMBED = CohereEmbed()
