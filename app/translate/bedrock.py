"""Bedrock: /v1/chat/completions over the Converse API, /v1/embeddings over InvokeModel (Titan, Cohere).

Converse (POST /model/{modelId}/converse and /converse-stream) is the one chat API every bedrock
chat model speaks. Its streamed answer is AWS's binary event stream, decoded with botocore's own
decoder as the bytes arrive. The model id goes into the path percent-encoded, so ARNs of
inference profiles and provisioned models (with `:` and `/`) work.
"""

from __future__ import annotations

import binascii
import json
import logging
from base64 import b64decode
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from botocore.eventstream import EventStreamBuffer, ParserError

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.errors import unified_error

log = logging.getLogger(__name__)
PROVIDER = "bedrock"

# Converse stop reasons → OpenAI finish reasons (anything else, e.g. malformed_model_output, is "stop").
FINISH = {
    "end_turn": shape.STOP, "stop_sequence": shape.STOP, "max_tokens": shape.LENGTH,
    "model_context_window_exceeded": shape.LENGTH, "tool_use": shape.TOOL_CALLS,
    "guardrail_intervened": shape.CONTENT_FILTER, "content_filtered": shape.CONTENT_FILTER,
}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
# Chat parameters read by the translation (the rest is dropped with a warning, see _warn_dropped).
_CHAT_READ = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                        "temperature", "top_p", "stop", "tools", "tool_choice", "n", "response_format", "top_k"})
# Values that ask for nothing beyond what bedrock does anyway: dropping them changes nothing, so no warning.
_HARMLESS = {"parallel_tool_calls": True, "logprobs": False, "store": False}
_LEGACY_FUNCTIONS = ("functions", "function_call")


def model_of(body: dict[str, Any], facts: CallFacts) -> str:
    """Return the bedrock model id (or ARN) of the call; none is a 400."""
    model = body.get("model")
    if isinstance(model, str) and model.startswith("@") and "/" in model:
        model = model.partition("/")[2]  # a catalog `@name/model`
    if not isinstance(model, str) or not model:
        model = facts.model
    if not model:
        raise BadRequest("bedrock needs a model: the model id, inference profile id or ARN to call")
    return model


def model_path(model: str, operation: str) -> str:
    """Return the native path of an operation on a model; the id is encoded whole (ARNs hold `:` and `/`)."""
    return f"/model/{quote(model, safe='')}/{operation}"


# --------------------------------------------------------------------------- chat request


class ConverseChat:
    """Translates the unified chat format to Converse and back (whole answers and event streams)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
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

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a Converse answer."""
        native = native if isinstance(native, dict) else {}
        output = native.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        blocks = message.get("content") if isinstance(message, dict) else None
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                calls.append(shape.tool_call(str(use.get("toolUseId") or ""), str(use.get("name") or ""),
                                             _arguments(use.get("input"))))
            elif isinstance(block.get("reasoningContent"), dict):
                text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
                if isinstance(text, str):
                    reasoning.append(text)
        content = "".join(texts) if texts else (None if calls else "")
        result = shape.message(content, calls)
        if reasoning and not facts.strict:
            result["reasoning_content"] = "".join(reasoning)  # an extra: OpenAI has no reasoning field
        finish = FINISH.get(str(native.get("stopReason")), shape.STOP)
        return shape.completion(facts, result, finish, converse_usage(native.get("usage")))

    def stream(self, facts: CallFacts) -> ConverseChunks:
        """Return a parser of one ConverseStream event stream."""
        return ConverseChunks(facts)


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
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
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
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        raise BadRequest('response_format json_object is not supported by bedrock: Converse constrains '
                         'output to a JSON schema only; send {"type": "json_schema", "json_schema": '
                         '{"name": ..., "schema": {...}}}')
    if kind != "json_schema":
        raise BadRequest('response_format.type must be "text", "json_object" or "json_schema"')
    definition = response_format.get("json_schema")
    if not isinstance(definition, dict) or not isinstance(definition.get("schema"), dict):
        raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
    json_schema: dict[str, Any] = {"schema": json.dumps(definition["schema"], separators=(",", ":"))}
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


def _arguments(value: Any) -> str:
    return json.dumps({} if value is None else value, ensure_ascii=False, separators=(",", ":"))


def converse_usage(usage: Any) -> dict[str, Any] | None:
    """Return the OpenAI usage of a Converse usage object.

    prompt_tokens counts cache reads and writes too (as OpenAI's does): Converse's inputTokens leaves them out.
    """
    if not isinstance(usage, dict):
        return None
    read = usage.get("cacheReadInputTokens")
    write = usage.get("cacheWriteInputTokens")
    prompt = usage.get("inputTokens")
    if prompt is not None:
        prompt += (read or 0) + (write or 0)
    return shape.usage(prompt, usage.get("outputTokens"), cached_tokens=read, cache_creation_input_tokens=write)


# --------------------------------------------------------------------------- chat stream


class ConverseChunks:
    """Reads a ConverseStream event stream (binary frames, split anywhere) into OpenAI chunks."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.frames = EventStreamBuffer()
        self.pending = 0  # bytes fed but not yet part of a whole frame
        self.started = False
        self.stopped = False
        self.tools: dict[int, int] = {}  # Converse content block index → OpenAI tool call index
        self.failure: UpstreamBroke | None = None  # an exception frame, held until the chunks before it are out
        self.handlers: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
            "messageStart": self._message_start, "contentBlockStart": self._block_start,
            "contentBlockDelta": self._block_delta, "messageStop": self._message_stop, "metadata": self._metadata,
        }

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks of the frames these bytes complete."""
        if self.failure is not None:
            raise self.failure
        self.frames.add_data(data)
        self.pending += len(data)
        chunks: list[dict[str, Any]] = []
        try:
            for frame in self.frames:
                self.pending -= frame.prelude.total_length
                chunks.extend(self._frame(frame.headers, frame.payload))
        except ParserError as err:
            self.failure = UpstreamBroke({"message": f"bedrock error: the event stream is corrupt ({err})",
                                          "type": "api_error", "param": None, "code": None})
        except UpstreamBroke as err:
            self.failure = err
        if self.failure is not None and not chunks:
            raise self.failure
        return chunks  # a failure after these chunks is raised by the next feed or finish

    def finish(self) -> list[dict[str, Any]]:
        """Return nothing; a stream that failed, or ends before messageStop or inside a frame, breaks."""
        if self.failure is not None:
            raise self.failure
        if self.pending or not self.stopped:
            raise UpstreamBroke({"message": "bedrock error: the stream ended before the answer was complete",
                                 "type": "api_error", "param": None, "code": None})
        return []

    def _frame(self, headers: dict[str, Any], payload: bytes) -> list[dict[str, Any]]:
        kind = headers.get(":message-type", "event")
        if kind == "exception":
            raise UpstreamBroke(stream_exception(str(headers.get(":exception-type") or "exception"), payload))
        if kind == "error":
            code = str(headers.get(":error-code") or "error")
            message = str(headers.get(":error-message") or "the stream failed")
            raise UpstreamBroke(stream_exception(code, json.dumps({"message": message}).encode()))
        handler = self.handlers.get(str(headers.get(":event-type")))
        if handler is None:
            return []  # contentBlockStop, and events this version does not know
        try:
            event = json.loads(payload) if payload else {}
        except ValueError:
            raise UpstreamBroke({"message": "bedrock error: a stream event is not JSON", "type": "api_error",
                                 "param": None, "code": None}) from None
        return handler(event if isinstance(event, dict) else {})

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self.started:
            self.started = True
            delta = {"role": "assistant", **delta}  # the first delta names the role
        return shape.chunk(self.facts, delta, finish_reason)

    def _message_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [] if self.started else [self._chunk({"content": ""})]

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        start = event.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return []
        index = self._tool_index(event.get("contentBlockIndex"))
        header = shape.tool_call(str(use.get("toolUseId") or ""), str(use.get("name") or ""), "", index=index)
        return [self._chunk({"tool_calls": [header]})]

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return []
        if isinstance(delta.get("text"), str):
            return [self._chunk({"content": delta["text"]})]
        use = delta.get("toolUse")
        if isinstance(use, dict) and isinstance(use.get("input"), str):
            index = self._tool_index(event.get("contentBlockIndex"))
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": use["input"]}}]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str) and not self.facts.strict:
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []  # signatures, citations, and what strict mode leaves out

    def _message_stop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.stopped = True
        return [self._chunk({}, FINISH.get(str(event.get("stopReason")), shape.STOP))]

    def _metadata(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        usage = converse_usage(event.get("usage"))
        return [] if usage is None else [shape.usage_chunk(self.facts, usage)]

    def _tool_index(self, block: Any) -> int:
        key = block if isinstance(block, int) else -1
        if key not in self.tools:
            self.tools[key] = len(self.tools)
        return self.tools[key]


def stream_exception(name: str, payload: bytes) -> dict[str, Any]:
    """Return the unified error of an exception frame (`throttlingException` → rate_limit_error)."""
    aws_type = name[:1].upper() + name[1:]  # the stream names exceptions in lower camel case
    return unified_error(PROVIDER, 500, payload, aws_type)["error"]


# --------------------------------------------------------------------------- embeddings

TITAN = "titan"
COHERE = "cohere"
# encoding_format is the front's: it encodes the float vectors as base64 when asked.
_EMBED_READ = frozenset({"model", "input", "dimensions", "input_type", "encoding_format"})


class BedrockEmbed:
    """Translates /v1/embeddings to InvokeModel on Titan (amazon.titan-embed-*) or Cohere (cohere.embed-*)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the InvokeModel request for an OpenAI embeddings body."""
        model = model_of(body, facts)
        family = embed_family(model)
        texts = embed_inputs(body.get("input"))
        dimensions = body.get("dimensions")
        native: dict[str, Any]
        if family == TITAN:
            if len(texts) != 1:
                raise BadRequest(f"input: amazon.titan-embed models embed one text per call and {len(texts)} were "
                                 "sent; send one request per text (cohere.embed-* models take up to 96)")
            native = {"inputText": texts[0]}
            if dimensions is not None:
                native["dimensions"] = dimensions
        else:
            # Cohere requires input_type; search_document (embedding a corpus) unless the client names one.
            native = {"texts": texts, "input_type": body.get("input_type") or "search_document"}
            if dimensions is not None:
                native["output_dimension"] = dimensions
        dropped = sorted(name for name, value in body.items() if name not in _EMBED_READ and value is not None)
        if dropped:
            log.warning("bedrock: embedding parameters dropped: %s", ", ".join(dropped))
        return NativeRequest(model_path(model, "invoke"), native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for a Titan or Cohere answer."""
        native = native if isinstance(native, dict) else {}
        if isinstance(native.get("embedding"), list):  # Titan
            tokens = native.get("inputTextTokenCount")
            return shape.embeddings(facts, [native["embedding"]], tokens if isinstance(tokens, int) else None)
        vectors = native.get("embeddings")
        if isinstance(vectors, dict):  # Cohere's embeddings_by_type answer
            vectors = vectors.get("float")
        return shape.embeddings(facts, vectors if isinstance(vectors, list) else [], None)


def embed_family(model: str) -> str:
    """Return which embedding body a model takes; a model of another family is a 400."""
    if "amazon.titan-embed" in model:
        return TITAN
    if "cohere.embed" in model:
        return COHERE
    raise BadRequest(f"embeddings on bedrock support amazon.titan-embed-* and cohere.embed-* models, not {model}")


def embed_inputs(value: Any) -> list[str]:
    """Return the texts of an OpenAI embeddings input (a string or a list of strings)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("input must be a string or a non-empty list of strings: bedrock embeds text, not token ids")


CHAT = ConverseChat()
EMBED = BedrockEmbed()
