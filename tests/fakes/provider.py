"""A real loopback HTTP server that imitates LLM provider APIs, for tests, demos and benchmarks.

In-process use::

    with FakeProvider() as fp:
        fp.enqueue(status=429, body={"error": "slow down"}, headers={"retry-after": "1"})
        ...  # point the gateway at fp.url
        assert fp.requests[0].path == "/v1/chat/completions"

Command line use (runs until SIGTERM or SIGINT)::

    python -m tests.fakes.provider --host 127.0.0.1 --port 9990

Without a scripted answer every request is served by its route (OpenAI, Anthropic, Cohere or echo),
and ``x-fake-*`` request headers bend that answer: see ``_Controls``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.fakes import native
from tests.fakes.net import listen_port

_READ_CHUNK = 1 << 20  # request bodies are read 1 MiB at a time
_WRITE_CHUNK = 64 * 1024  # generated response bodies are written 64 KiB at a time
_MAX_LINE = 65536  # longest chunk-size or trailer line accepted in a chunked request body
_ECHO_TEXT_LIMIT = 64 * 1024  # echo answers include the body text only up to this size
_HANG_LIMIT_S = 60.0  # a hanging request is released after this long, whatever happens
_POLL_S = 0.05  # how often waiting code checks whether the server is stopping
_RESET_PREFIX_BYTES = 1000  # body bytes written before an x-fake-reset abort
_RESET_DECLARED_BYTES = 100_000  # Content-Length announced before an x-fake-reset abort
_GARBAGE = b"this is not http\r\n\r\n"
_PATTERN = bytes(range(256)) * (_WRITE_CHUNK // 256)  # one 64 KiB block of the body pattern
_NO_BODY_STATUSES = frozenset({204, 304})

OPENAI_TEXT = "Hello from fake openai"
ANTHROPIC_TEXT = "Hello from fake anthropic"
_STREAM_PIECES = ("Hello", " from", " fake", " stream")
STAMP = "@@stamp@@"  # a streamed text piece the fake replaces by the time the event is written
_STAMP = STAMP.encode()


def pattern_bytes(n: int) -> bytes:
    """Return the first n bytes of the pattern sent for ``x-fake-body-bytes: n``."""
    whole, rest = divmod(n, len(_PATTERN))
    return _PATTERN * whole + _PATTERN[:rest]


# --------------------------------------------------------------------------- public data


@dataclass
class Received:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class _Scripted:
    """An answer queued with FakeProvider.enqueue."""

    status: int
    body: bytes | dict | list | str
    headers: dict[str, str]
    delay_ms: int


@dataclass
class _Answer:
    """A response ready to be written: a whole body, or chunks streamed as they are produced."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: Iterable[bytes] | None = None
    length: int | None = None  # Content-Length of streamed chunks; None means chunked encoding


class _BadRequest(Exception):
    """The request could not be read as HTTP (bad framing or bad control header)."""


# --------------------------------------------------------------------------- control headers


def _int_header(headers: dict[str, str], name: str, default: int | None) -> int | None:
    """Return the integer value of a control header, or default when absent."""
    value = headers.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {value!r}") from None


def _flag(headers: dict[str, str], name: str) -> bool:
    """Return whether a control header is switched on."""
    return headers.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class _Controls:
    """The x-fake-* headers of one request."""

    status: int | None
    delay_ms: int
    retry_after: str | None
    body_bytes: int | None
    gzip: bool
    reset: bool
    garbage: bool
    hang: bool
    redirect: str | None
    set_cookie: str | None
    events: int
    interval_ms: int

    @classmethod
    def parse(cls, headers: dict[str, str]) -> _Controls:
        """Read the control headers, raising _BadRequest for malformed numbers."""
        return cls(
            status=_int_header(headers, "x-fake-status", None),
            delay_ms=_int_header(headers, "x-fake-delay-ms", 0) or 0,
            retry_after=headers.get("x-fake-retry-after"),
            body_bytes=_int_header(headers, "x-fake-body-bytes", None),
            gzip=_flag(headers, "x-fake-gzip"),
            reset=_flag(headers, "x-fake-reset"),
            garbage=_flag(headers, "x-fake-garbage"),
            hang=_flag(headers, "x-fake-hang"),
            redirect=headers.get("x-fake-redirect"),
            set_cookie=headers.get("x-fake-set-cookie"),
            events=max(0, _int_header(headers, "x-fake-events", 3) or 0),
            interval_ms=max(0, _int_header(headers, "x-fake-event-interval-ms", 0) or 0),
        )

    @property
    def error_status(self) -> int | None:
        """Return the forced status when it is not a success."""
        if self.status is not None and not 200 <= self.status < 300:
            return self.status
        return None

    def extra_headers(self) -> list[tuple[str, str]]:
        """Return the headers that the controls add to any answer."""
        extra = []
        if self.retry_after is not None:
            extra.append(("Retry-After", self.retry_after))
        if self.set_cookie is not None:
            extra.append(("Set-Cookie", self.set_cookie))
        return extra


# --------------------------------------------------------------------------- answer builders


def _json_answer(status: int, obj: Any) -> _Answer:
    """Return a JSON answer."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _Answer(status, body, [("Content-Type", "application/json")])


def _openai_error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> _Answer:
    """Return an error in OpenAI's shape."""
    return _json_answer(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})


def _anthropic_error(status: int, kind: str, message: str) -> _Answer:
    """Return an error in Anthropic's shape."""
    return _json_answer(status, {"type": "error", "error": {"type": kind, "message": message}})


def _fake_error(status: int) -> _Answer:
    """Return the error forced by x-fake-status."""
    return _openai_error(status, f"fake error {status}", kind="fake_error")


def _sse_answer(events: list[bytes], interval_s: float, wait: Callable[[float], Any]) -> _Answer:
    """Return a text/event-stream answer whose events are written one by one, interval_s apart.

    A STAMP in an event is replaced by the time it is written (for timing benchmarks, ``x-fake-stamp``).
    """

    def paced() -> Iterator[bytes]:
        for index, event in enumerate(events):
            if index and interval_s:
                wait(interval_s)  # an Event.wait, so a stopping server is not held up
            yield event.replace(_STAMP, f"{time.time():.6f}".encode()) if _STAMP in event else event

    headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
    return _Answer(200, headers=headers, chunks=paced())


def _body_bytes_answer(n: int) -> _Answer:
    """Return n pattern bytes, generated as they are written rather than held in memory."""

    def generate() -> Iterator[bytes]:
        remaining = n
        while remaining > 0:
            block = _PATTERN if remaining >= len(_PATTERN) else _PATTERN[:remaining]
            remaining -= len(block)
            yield block

    return _Answer(200, headers=[("Content-Type", "application/octet-stream")], chunks=generate(), length=n)


def _token_estimate(value: Any) -> int:
    """Return a rough, deterministic token count for a request field."""
    return max(1, len(json.dumps(value)) // 4)


def _bearer_token(headers: dict[str, str]) -> str:
    """Return the token of an Authorization: Bearer header, or an empty string."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _json_object(body: bytes) -> dict | None:
    """Return the body as a JSON object, or None when it is not one."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _new_id(prefix: str) -> str:
    """Return a provider-looking identifier."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass
class _Context:
    """What a route handler needs: the request, its controls and a stop-aware sleep."""

    request: Received
    controls: _Controls
    wait: Callable[[float], Any]


def _openai_chat(ctx: _Context) -> _Answer:
    """Answer POST /v1/chat/completions like OpenAI."""
    if not _bearer_token(ctx.request.headers):
        return _openai_error(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    payload = _json_object(ctx.request.body)
    if payload is None:
        return _openai_error(400, "We could not parse the JSON body of your request.")
    model = payload.get("model") or "fake-model"
    prompt_tokens = _token_estimate(payload.get("messages", []))
    if payload.get("stream"):
        return _openai_stream(ctx, payload, model, prompt_tokens)
    completion_tokens = len(OPENAI_TEXT.split())
    return _json_answer(200, {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": OPENAI_TEXT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": "fp_fake",
    })


def _sse_data(obj: Any) -> bytes:
    """Return one data-only server-sent event."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _openai_stream(ctx: _Context, payload: dict, model: str, prompt_tokens: int) -> _Answer:
    """Answer a streamed chat completion: N content chunks, a finish chunk, optional usage, [DONE]."""
    base = {"id": _new_id("chatcmpl-"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake"}
    events = []
    for index in range(ctx.controls.events):
        delta = {"content": _STREAM_PIECES[index % len(_STREAM_PIECES)]}
        if index == 0:
            delta = {"role": "assistant", **delta}  # OpenAI names the role in the first chunk only
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        events.append(_sse_data({**base, "choices": [choice]}))
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    events.append(_sse_data({**base, "choices": [finish]}))
    if (payload.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": ctx.controls.events,
                 "total_tokens": prompt_tokens + ctx.controls.events}
        events.append(_sse_data({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)


def _openai_embeddings(ctx: _Context) -> _Answer:
    """Answer POST /v1/embeddings with small deterministic vectors."""
    payload = _json_object(ctx.request.body)
    if payload is None:
        return _openai_error(400, "We could not parse the JSON body of your request.")
    inputs = payload.get("input", "")
    items = inputs if isinstance(inputs, list) else [inputs]
    dimensions = int(payload.get("dimensions") or 8)
    data = [{"object": "embedding", "index": i, "embedding": _vector(item, dimensions)}
            for i, item in enumerate(items)]
    tokens = _token_estimate(inputs)
    return _json_answer(200, {"object": "list", "data": data, "model": payload.get("model") or "fake-embedding",
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _vector(item: Any, dimensions: int) -> list[float]:
    """Return a deterministic unit-range vector derived from the input."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round(digest[i % len(digest)] / 255 * 2 - 1, 6) for i in range(dimensions)]


def _openai_models(ctx: _Context) -> _Answer:
    """Answer GET /v1/models."""
    models = ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    return _json_answer(200, {"object": "list", "data": [
        {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"} for name in models]})


def _anthropic_messages(ctx: _Context) -> _Answer:
    """Answer POST /v1/messages like Anthropic, including its validation of headers and body.

    The answer is text, or a tool_use block when tool_choice forces a tool (or ``x-fake-tool-call: <name>``
    asks for one), led by a thinking block when the request enables thinking.
    """
    headers = ctx.request.headers
    if not headers.get("x-api-key"):
        return _anthropic_error(401, "authentication_error", "x-api-key header is required")
    if not headers.get("anthropic-version"):
        return _anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
    payload = _json_object(ctx.request.body)
    if payload is None:
        return _anthropic_error(400, "invalid_request_error", "There was an error parsing the body of your request")
    problem = _anthropic_problem(payload)
    if problem:
        return _anthropic_error(400, "invalid_request_error", problem)
    model = payload.get("model") or "claude-fake"
    input_tokens = _token_estimate(payload["messages"])
    if payload.get("stream"):
        return _anthropic_stream(ctx, model, input_tokens, payload)
    blocks = _anthropic_blocks(payload, headers, ANTHROPIC_TEXT)
    return _json_answer(200, {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "model": model,
        "stop_reason": "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": _token_estimate(blocks)},
    })


_ANTHROPIC_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "output_config", "output_format", "service_tier", "container",
    "mcp_servers", "context_management", "cache_control", "inference_geo", "speed", "diagnostics"})
_ANTHROPIC_BLOCKS = {  # the content block types each role may send
    "user": ("text", "image", "document", "search_result", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"),
}
_ANTHROPIC_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
ANTHROPIC_THINKING = "The user greets me; a short answer will do."


def _anthropic_problem(payload: dict) -> str | None:
    """Return why Anthropic would reject this body, or None."""
    if "max_tokens" not in payload:
        return "max_tokens: Field required"
    max_tokens = payload["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        return "max_tokens: Input should be a valid integer"
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    for name in payload:
        if name not in _ANTHROPIC_FIELDS:
            return f"{name}: Extra inputs are not permitted"
    temperature = payload.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    system = payload.get("system")
    if system is not None and not isinstance(system, str) and not (
            isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system)):
        return "system: Input should be a valid string or a list of text blocks"
    for index, message in enumerate(messages):
        problem = _anthropic_message_problem(index, message)
        if problem:
            return problem
    return _anthropic_tools_problem(payload) or _anthropic_pairing_problem(messages)


def _anthropic_message_problem(index: int, message: Any) -> str | None:
    """Return why Anthropic would reject one input message, or None."""
    role = message.get("role") if isinstance(message, dict) else None
    if role == "system":
        return ('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.')
    if role not in _ANTHROPIC_BLOCKS:
        return f"messages.{index}.role: Input should be 'user' or 'assistant'"
    content = message.get("content")
    if isinstance(content, str):
        return None if content else (f"messages.{index}: all messages must have non-empty content except for "
                                     "the optional final assistant message")
    if not isinstance(content, list):
        return f"messages.{index}.content: Input should be a valid string or list"
    for position, block in enumerate(content):
        problem = _anthropic_block_problem(f"messages.{index}.content.{position}", role, block)
        if problem:
            return problem
    return None


def _anthropic_block_problem(where: str, role: str, block: Any) -> str | None:
    """Return why Anthropic would reject one content block of a message, or None."""
    kind = block.get("type") if isinstance(block, dict) else None
    known = _ANTHROPIC_BLOCKS["user"] + _ANTHROPIC_BLOCKS["assistant"]
    if kind not in known:
        expected = ", ".join(f"'{name}'" for name in known)
        return f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags: {expected}"
    if kind not in _ANTHROPIC_BLOCKS[role]:
        return f"{where}: `{kind}` blocks are not allowed in `{role}` messages"
    if kind == "text" and not (isinstance(block.get("text"), str) and block["text"]):
        return "messages: text content blocks must be non-empty"
    if kind == "image":
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if source.get("type") == "base64":
            for name in ("media_type", "data"):
                if not source.get(name):
                    return f"{where}.image.source.base64.{name}: Field required"
            if source["media_type"] not in _ANTHROPIC_IMAGE_TYPES:
                allowed = ", ".join(f"'{name}'" for name in _ANTHROPIC_IMAGE_TYPES)
                return f"{where}.image.source.base64.media_type: Input should be {allowed}"
        elif source.get("type") == "url":
            if not source.get("url"):
                return f"{where}.image.source.url.url: Field required"
        else:
            return f"{where}.image.source: Input tag '{source.get('type')}' does not match 'base64', 'url', 'file'"
    if kind == "tool_use" and not (block.get("id") and block.get("name") and isinstance(block.get("input"), dict)):
        return f"{where}.tool_use: id, name and an object input are required"
    if kind == "tool_result" and not block.get("tool_use_id"):
        return f"{where}.tool_result.tool_use_id: Field required"
    return None


def _anthropic_tools_problem(payload: dict) -> str | None:
    """Return why Anthropic would reject the tools, tool_choice or thinking of a body, or None."""
    tools = payload.get("tools") or []
    names = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{index}.name: Field required"
        if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{index}.custom.input_schema: Field required"
        names.append(tool["name"])
    choice = payload.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if choice is not None and kind not in ("auto", "any", "tool", "none"):
        return f"tool_choice: Input tag '{kind}' found using 'type' does not match 'auto', 'any', 'tool', 'none'"
    chosen = choice.get("name") if isinstance(choice, dict) and kind == "tool" else None
    if kind == "tool" and chosen not in names:
        return f"tool_choice.tool.name: Tool '{chosen}' not found in the provided tools"
    thinking = payload.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if payload["max_tokens"] <= budget:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if _anthropic_thinks(payload) and kind in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _anthropic_pairing_problem(messages: list) -> str | None:
    """Return why the tool_use / tool_result pairing would be refused (consecutive turns are combined first)."""
    turns: list[tuple[int, str, list]] = []  # (index of the turn's first message, role, blocks)
    for index, message in enumerate(messages):
        content = message["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        if turns and turns[-1][1] == message["role"]:
            turns[-1][2].extend(blocks)
        else:
            turns.append((index, message["role"], list(blocks)))
    for position, (index, _role, blocks) in enumerate(turns):
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if results:
            before = turns[position - 1] if position else None
            offered = {b["id"] for b in before[2] if b["type"] == "tool_use"} if before else set()
            unexpected = [tool_id for tool_id in results if tool_id not in offered]
            if unexpected:
                return (f"messages.{index}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message.")
        uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
        if uses and position + 1 < len(turns):
            answered = {b["tool_use_id"] for b in turns[position + 1][2] if b["type"] == "tool_result"}
            missing = [tool_id for tool_id in uses if tool_id not in answered]
            if missing:
                return (f"messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately "
                        f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                        "`tool_result` block in the next message.")
    return None


def _anthropic_thinks(payload: dict) -> bool:
    """Return whether the request turns thinking on."""
    thinking = payload.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _anthropic_blocks(payload: dict, headers: dict[str, str], text: str) -> list[dict[str, Any]]:
    """Return the answer's content blocks: [thinking], then text, or a tool_use (after a line of text if asked)."""
    blocks: list[dict[str, Any]] = []
    if _anthropic_thinks(payload):
        signature = hashlib.sha256(ANTHROPIC_THINKING.encode()).hexdigest()
        blocks.append({"type": "thinking", "thinking": ANTHROPIC_THINKING, "signature": signature})
    tools = {tool["name"]: tool for tool in payload.get("tools") or []}
    choice = payload.get("tool_choice") or {}
    asked = headers.get("x-fake-tool-call")
    name = choice.get("name") if choice.get("type") == "tool" else None
    if choice.get("type") == "any" and tools:
        name = next(iter(tools))
    if name is None and asked in tools and choice.get("type") != "none":
        blocks.append({"type": "text", "text": f"I will call {asked}."})
        name = asked
    if name is None:
        return [*blocks, {"type": "text", "text": text}]
    schema = tools[name].get("input_schema") or {}
    return [*blocks, {"type": "tool_use", "id": _new_id("toolu_"), "name": name, "input": _anthropic_input(schema)}]


def _anthropic_input(schema: dict) -> dict[str, Any]:
    """Return a deterministic tool input filling the schema's required properties."""
    samples = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties") or {}
    result: dict[str, Any] = {}
    for name in schema.get("required") or []:
        spec = properties.get(name) or {}
        result[name] = spec["enum"][0] if spec.get("enum") else samples.get(str(spec.get("type")), "fake")
    return result


def _sse_named(name: str, obj: Any) -> bytes:
    """Return one named server-sent event, as Anthropic sends them."""
    return f"event: {name}\n".encode() + _sse_data(obj)


def _anthropic_stream(ctx: _Context, model: str, input_tokens: int, payload: dict) -> _Answer:
    """Answer a streamed message with Anthropic's event sequence.

    ``x-fake-stream-error: overloaded`` ends the stream with an `error` event after the first delta.
    """
    count = ctx.controls.events
    stamped = _flag(ctx.request.headers, "x-fake-stamp")
    piece_of = (lambda i: STAMP) if stamped else (lambda i: _STREAM_PIECES[i % len(_STREAM_PIECES)])
    text = "".join(piece_of(index) for index in range(count))
    blocks = _anthropic_blocks(payload, ctx.request.headers, text)
    message: dict[str, Any] = {
        "id": _new_id("msg_"), "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    events = [_sse_named("message_start", {"type": "message_start", "message": message})]
    for index, block in enumerate(blocks):
        pieces = [piece_of(i) for i in range(count)] if block.get("text") == text else None
        events += _anthropic_block_events(index, block, pieces)
    broken = ctx.request.headers.get("x-fake-stream-error")
    if broken:
        kind, said = ("overloaded_error", "Overloaded") if broken == "overloaded" else ("api_error", "Internal error")
        events = events[:3] + [_sse_named("error", {"type": "error", "error": {"type": kind, "message": said}})]
        return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)
    stop_reason = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
    output_tokens = count if stop_reason == "end_turn" and len(blocks) == 1 else _token_estimate(blocks)
    events += [
        _sse_named("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                     "usage": {"output_tokens": output_tokens}}),
        _sse_named("message_stop", {"type": "message_stop"}),
    ]
    return _sse_answer(events, ctx.controls.interval_ms / 1000, ctx.wait)


def _anthropic_block_events(index: int, block: dict[str, Any], pieces: list[str] | None) -> list[bytes]:
    """Return the start, delta and stop events of one streamed content block."""
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        texts = pieces if pieces is not None else [block["text"]]
        deltas = [{"type": "text_delta", "text": piece} for piece in texts]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        half = len(block["thinking"]) // 2
        deltas = [{"type": "thinking_delta", "thinking": part} for part in (block["thinking"][:half],
                                                                            block["thinking"][half:])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use: the input arrives as pieces of JSON text, the first one empty as Anthropic sends it
        start = {**block, "input": {}}
        arguments = json.dumps(block["input"])
        third = max(1, len(arguments) // 3)
        parts = [arguments[:third], arguments[third:2 * third], arguments[2 * third:]]
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in ["", *filter(None, parts)]]
    events = [_sse_named("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": start})]
    events += [_sse_named("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
               for delta in deltas]
    events.append(_sse_named("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _cohere_rerank(ctx: _Context) -> _Answer:
    """Answer POST /v1/rerank or /v2/rerank like Cohere, scoring documents by word overlap with the query."""
    if not _bearer_token(ctx.request.headers):
        return _json_answer(401, {"message": "no api key supplied"})
    payload = _json_object(ctx.request.body)
    if payload is None or not isinstance(payload.get("documents"), list):
        return _json_answer(400, {"message": "invalid request: documents must be a list"})
    query_words = set(str(payload.get("query", "")).lower().split())
    scored = []
    for index, document in enumerate(payload["documents"]):
        text = document.get("text", "") if isinstance(document, dict) else str(document)
        words = set(text.lower().split())
        overlap = len(query_words & words) / (len(query_words | words) or 1)
        # The index term breaks ties so the order is deterministic and scores stay distinct.
        scored.append((round(0.5 * overlap + 0.49 / (index + 1), 6), index))
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    top_n = payload.get("top_n")
    if isinstance(top_n, int):
        scored = scored[:top_n]
    return _json_answer(200, {
        "id": str(uuid.uuid4()),
        "results": [{"index": index, "relevance_score": score} for score, index in scored],
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
    })


def _echo(ctx: _Context) -> _Answer:
    """Answer any other request with a description of what was received."""
    request = ctx.request
    body_text = None
    if len(request.body) <= _ECHO_TEXT_LIMIT:
        try:
            body_text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            body_text = None
    return _json_answer(200, {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": request.headers,
        "body_sha256": hashlib.sha256(request.body).hexdigest(),
        "body_length": len(request.body),
        "body_text": body_text,
    })


_ROUTES: dict[tuple[str, str], Callable[[_Context], _Answer]] = {
    ("POST", "/chat/completions"): _openai_chat,
    ("POST", "/embeddings"): _openai_embeddings,
    ("GET", "/models"): _openai_models,
    ("POST", "/messages"): _anthropic_messages,
    ("POST", "/rerank"): _cohere_rerank,
}


def _route(method: str, path: str) -> Callable[[_Context], _Answer]:
    """Return the handler for a request; provider routes live both at the root and under /v1."""
    key = path.rstrip("/") or "/"
    if key == "/v2/rerank":
        key = "/rerank"
    elif key.startswith("/v1/"):
        key = key[len("/v1"):]
    handler = _ROUTES.get((method, key))
    if handler is None:
        handler = native.match(method, path.split("?", 1)[0])  # Gemini, Vertex, Bedrock, Cohere v2
    return handler or _echo


def _scripted_answer(scripted: _Scripted) -> _Answer:
    """Return the answer for an enqueued script entry."""
    body = scripted.body
    if isinstance(body, (dict, list)):
        content_type, data = "application/json", json.dumps(body).encode()
    elif isinstance(body, str):
        content_type, data = "text/plain; charset=utf-8", body.encode()
    else:
        content_type, data = "application/octet-stream", bytes(body)
    names = {name.lower() for name in scripted.headers}
    headers = [(name, value) for name, value in scripted.headers.items()
               # The server frames the body itself, so framing headers from the script would contradict it.
               if name.lower() not in {"content-length", "transfer-encoding"}]
    if "content-type" not in names:
        headers.insert(0, ("Content-Type", content_type))
    return _Answer(scripted.status, data, headers)


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Serve one connection: read each request, record it, answer it."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses for streams
    disable_nagle_algorithm = True  # so each streamed event leaves at once
    server: _Server

    def do_GET(self) -> None:
        """Handle any method the same way."""
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks do not want a line per request."""

    def _handle(self) -> None:
        """Record the request and send the scripted or normal answer."""
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True  # the rest of the stream cannot be trusted
            self._send(_openai_error(400, str(exc)))
            return
        path, _, query = self.path.partition("?")
        request = Received(self.command, path, query, self._lower_headers(), body)
        provider = self.server.provider
        provider._record(request)
        scripted = provider._next_scripted()
        if scripted is not None:
            self._wait(scripted.delay_ms / 1000)
            self._send(_scripted_answer(scripted))
            return
        try:
            controls = _Controls.parse(request.headers)
        except _BadRequest as exc:
            self._send(_openai_error(400, str(exc)))
            return
        self._serve(request, controls)

    def _serve(self, request: Received, controls: _Controls) -> None:
        """Answer a request that nothing was enqueued for, obeying its control headers."""
        if controls.hang:
            self._hang()
            return
        self._wait(controls.delay_ms / 1000)
        if controls.garbage:
            self._send_garbage()
        elif controls.reset:
            self._send_reset()
        else:
            self._send(self._answer(request, controls), controls)

    def _answer(self, request: Received, controls: _Controls) -> _Answer:
        """Return the answer that the control headers or the route call for."""
        if controls.redirect is not None:
            answer = _Answer(302, b"redirecting\n", [("Location", controls.redirect),
                                                     ("Content-Type", "text/plain")])
        elif controls.error_status is not None:
            answer = _fake_error(controls.error_status)
        elif controls.body_bytes is not None:
            answer = _body_bytes_answer(controls.body_bytes)
        else:
            context = _Context(request, controls, self._wait)
            # A bug in the fake should show as a 500 the test can read, not as a dropped connection.
            try:
                answer = _route(request.method, request.path)(context)
            except Exception as exc:  # noqa: BLE001
                answer = _openai_error(500, f"fake provider failed: {exc!r}", kind="server_error")
        if controls.status is not None and controls.error_status is None and answer.status == 200:
            answer.status = controls.status
        answer.headers += controls.extra_headers()
        return answer

    def _lower_headers(self) -> dict[str, str]:
        """Return the request headers with lower-cased names, repeated headers joined by commas."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    # ----- reading

    def _read_body(self) -> bytes:
        """Read the whole request body, whatever its framing."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _BadRequest("invalid Content-Length") from None
        return self._read_exact(length)

    def _read_exact(self, length: int) -> bytes:
        """Read exactly length bytes, a piece at a time so huge bodies stream in."""
        parts = []
        remaining = length
        while remaining > 0:
            part = self.rfile.read(min(remaining, _READ_CHUNK))
            if not part:
                raise _BadRequest("request body ended early")
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)

    def _read_chunked(self) -> bytes:
        """Read and decode a Transfer-Encoding: chunked body, then skip its trailers."""
        parts = []
        while True:
            line = self.rfile.readline(_MAX_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(f"invalid chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            parts.append(self._read_exact(size))
            if self.rfile.readline(_MAX_LINE).strip():
                raise _BadRequest("chunk not followed by CRLF")
        while self.rfile.readline(_MAX_LINE).strip():
            pass  # trailer fields carry nothing the fake cares about
        return b"".join(parts)

    # ----- writing

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops."""
        if seconds > 0:
            self.server.stopping.wait(seconds)

    def _send(self, answer: _Answer, controls: _Controls | None = None) -> None:
        """Write an answer with framing that keeps the connection reusable."""
        if controls is not None and controls.gzip and answer.chunks is None and answer.body:
            answer.body = gzip.compress(answer.body)
            answer.headers.append(("Content-Encoding", "gzip"))
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.chunks is None:
            self._send_whole(answer)
        elif answer.length is not None:
            self._send_sized_stream(answer.chunks, answer.length)
        else:
            self._send_chunked(answer.chunks)

    def _body_allowed(self, status: int) -> bool:
        """Return whether a body may follow the headers of this answer."""
        return self.command != "HEAD" and status >= 200 and status not in _NO_BODY_STATUSES

    def _send_whole(self, answer: _Answer) -> None:
        """Write headers and a buffered body."""
        if answer.status >= 200 and answer.status != 204:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self._body_allowed(answer.status) and answer.body:
            self.wfile.write(answer.body)

    def _send_sized_stream(self, chunks: Iterable[bytes], length: int) -> None:
        """Write headers with Content-Length, then the chunks as they are produced."""
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            for chunk in chunks:
                self.wfile.write(chunk)

    def _send_chunked(self, chunks: Iterable[bytes]) -> None:
        """Write headers, then each chunk in its own HTTP chunk, so streamed events arrive one by one."""
        if self.request_version == "HTTP/1.0":
            # HTTP/1.0 clients know no chunked encoding: the end of the body is the end of the connection.
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(chunk)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        for chunk in chunks:
            if chunk:
                # One write per chunk: size line, data and CRLF go out together.
                self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def _send_garbage(self) -> None:
        """Write bytes that are not an HTTP response, then close."""
        self.close_connection = True
        self.wfile.write(_GARBAGE)

    def _send_reset(self) -> None:
        """Promise a long body, send a little of it, then abort the connection with a TCP RST."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(_RESET_DECLARED_BYTES))
        self.end_headers()
        self.wfile.write(pattern_bytes(_RESET_PREFIX_BYTES))
        # Give the client time to read what was sent: data still unread when the RST lands may be discarded.
        self._wait(0.1)
        # Linger on with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the socket is only really closed once its file objects are
        self.connection.close()

    def _hang(self) -> None:
        """Hold the connection without answering until the client leaves, the server stops or time runs out."""
        self.close_connection = True
        deadline = time.monotonic() + _HANG_LIMIT_S
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], _POLL_S)
            if readable and not self._peer_still_there():
                return

    def _peer_still_there(self) -> bool:
        """Return False once the client has closed its side (a readable socket with nothing to read)."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that counts connections and can cut every open one."""

    daemon_threads = True  # a stuck connection never keeps the process alive
    block_on_close = False  # stop() cuts connections itself instead of joining their threads
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], provider: FakeProvider) -> None:
        self.provider = provider
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, counting and tracking it."""
        sock, address = super().get_request()
        with self._open_lock:
            self._open.add(sock)
        self.provider._count_connection()
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        """Forget a connection as it is closed."""
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def cut_open_connections(self) -> None:
        """Shut down every open connection, so threads blocked reading or waiting on it return."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its own thread

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that go away mid-answer; report anything else."""
        if isinstance(sys.exc_info()[1], OSError) or self.stopping.is_set():
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------- the fake


class FakeProvider:
    """A loopback fake LLM provider: start it, script it, point a client at url, inspect requests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, record: bool = True) -> None:
        self.host = host
        self.port = port
        self.record = record  # the CLI turns this off so long benchmarks do not grow memory
        self.requests: list[Received] = []
        self._changed = threading.Condition()
        self._script: deque[_Scripted] = deque()
        self._connections = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None  # kept after stop, to test a provider that went away

    # ----- lifecycle

    def start(self) -> Self:
        """Bind and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("FakeProvider already started")
        self._server = _Server((self.host, self.port or listen_port()), self)
        host, self.port = self._server.server_address[:2]
        self._address = (str(host), self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": _POLL_S},
                                        name=f"fake-provider-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket, idle keep-alive and hanging ones included."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()  # returns once serve_forever has left its loop
        server.cut_open_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        """Start when entering a with block (if not started yet)."""
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop when leaving a with block."""
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:54321 (still known after stop)."""
        if self._address is None:
            raise RuntimeError("FakeProvider was never started; call start() first")
        host, port = self._address
        return f"http://{host}:{port}"

    # ----- scripting and inspection

    @property
    def connections(self) -> int:
        """Return how many TCP connections were accepted since start or reset."""
        with self._changed:
            return self._connections

    @property
    def open_connections(self) -> int:
        """Return how many TCP connections are open right now."""
        server = self._server
        if server is None:
            return 0
        with server._open_lock:
            return len(server._open)

    def reset(self) -> None:
        """Forget received requests, the script and the connection count."""
        with self._changed:
            self.requests.clear()
            self._script.clear()
            self._connections = 0

    def enqueue(self, status: int = 200, body: bytes | dict | list | str = b"",
                headers: dict[str, str] | None = None, delay_ms: int = 0) -> None:
        """Answer the next unanswered request (any path) with this, ahead of normal behaviour; first in, first out."""
        with self._changed:
            self._script.append(_Scripted(status, body, dict(headers or {}), delay_ms))

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least n requests arrived and return them all; raise TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests within {timeout}s, got {len(self.requests)}")
            return list(self.requests)

    # ----- called by the server threads

    def _record(self, request: Received) -> None:
        """Append a received request and wake up waiters."""
        with self._changed:
            if self.record:
                self.requests.append(request)
            self._changed.notify_all()

    def _next_scripted(self) -> _Scripted | None:
        """Take the next scripted answer, if any."""
        with self._changed:
            return self._script.popleft() if self._script else None

    def _count_connection(self) -> None:
        """Count one accepted connection."""
        with self._changed:
            self._connections += 1


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run the fake provider until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="Run the Portico fake LLM provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9990)
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    provider = FakeProvider(args.host, args.port, record=False).start()
    print(f"fake provider listening on {provider.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        provider.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
