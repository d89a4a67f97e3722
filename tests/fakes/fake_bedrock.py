"""The fake Bedrock runtime: Converse, ConverseStream (binary AWS event stream) and InvokeModel embeddings.

Paths (what bedrock-runtime serves; the model id is percent-encoded, so ARNs fit one segment)::

    POST /model/{modelId}/converse | /converse-stream | /invoke

Every request must carry a valid AWS SigV4 signature (service ``bedrock``) made with one of the
credentials below: the fake recomputes it with botocore from what it received (method, raw path,
query, the signed headers, the body) and refuses a mismatch with 403 InvalidSignatureException,
as AWS does. Converse bodies are checked against botocore's model of the Converse request (unknown
fields, wrong types, unions with two members...) and the rules the service adds (first message
from the user, alternating roles, no empty content or blank text, toolResult blocks that answer
the toolUse blocks of the turn before...); a refusal is a 400 ValidationException with
``x-amzn-ErrorType``. Control headers on top of provider.py's:

- ``x-fake-tool-call: <name>`` — answer with a toolUse of that tool (toolChoice any/tool do the same
  with the first / the named tool), unless the last turn carries tool results.
- ``x-fake-stream-error: throttling`` (or ``internal``, ``model``) — the event stream breaks after its
  first text delta with an exception frame (``:message-type: exception``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.validate import ParamValidator

from tests.fakes.native import route
from tests.fakes.provider import _Answer, _Context, _json_answer, _json_object, _new_id, _token_estimate, _vector

BEDROCK_TEXT = "Hello from fake bedrock"
EVENTSTREAM = "application/vnd.amazon.eventstream"
REGION = "us-east-1"
# Long-term credentials, and temporary ones that need their session token.
ACCESS_KEY = "AKIDPORTICOFAKE00001"
SECRET_KEY = "fake/Secret+Key0123456789abcdefghijKLMN"
TEMP_ACCESS_KEY = "ASIAPORTICOFAKE00002"
TEMP_SECRET_KEY = "fake/Temporary+Secret0123456789abcdefgh"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mYWtl"  # a Bedrock API key: sent as Authorization: Bearer, instead of SigV4
SESSION_TOKEN = "FwoGZXIvYXdzEFakeSessionToken//0123456789=="
_KEYS = {ACCESS_KEY: (SECRET_KEY, None), TEMP_ACCESS_KEY: (TEMP_SECRET_KEY, SESSION_TOKEN)}
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")
_SKEW = timedelta(minutes=15)  # AWS refuses signatures older (or newer) than this
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                            r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
                            r"Signature=(?P<signature>[0-9a-f]{64})$")
_MODEL = r"/model/(?P<model>[^/]+)"
_STREAM_ERRORS = {
    "throttling": ("throttlingException", "Too many requests, please wait before trying again."),
    "internal": ("internalServerException", "The server encountered an internal error."),
    "model": ("modelStreamErrorException", "The model stream failed."),
}
_SERVICE_MODEL = botocore.session.get_session().get_service_model("bedrock-runtime")
_CONVERSE_INPUT = _SERVICE_MODEL.operation_model("Converse").input_shape
_IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class _Refused(Exception):
    """AWS refuses the request: status, x-amzn-ErrorType name and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def answer(self) -> _Answer:
        """Return the error as AWS's REST-JSON services send it."""
        answer = _json_answer(self.status, {"message": self.message})
        answer.headers += [("x-amzn-ErrorType", f"{self.kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                           ("x-amzn-RequestId", str(uuid.uuid4()))]
        return answer


def _invalid(message: str) -> _Refused:
    return _Refused(400, "ValidationException", message)


# --------------------------------------------------------------------------- event stream encoding


def encode_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """Return one eventstream message: prelude (lengths + CRC), string headers, payload, message CRC."""
    raw_headers = b""
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        raw_headers += struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value
    prelude = struct.pack(">II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, body: dict[str, Any]) -> bytes:
    """Return a ConverseStream event, padded with the random-length "p" field the real service adds."""
    padded = {**body, "p": "abcdefghijklmnopqrstuvwxyz"[:len(event_type)]}
    return encode_frame([(":event-type", event_type), (":content-type", "application/json"),
                         (":message-type", "event")], json.dumps(padded, separators=(",", ":")).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    """Return an exception message, as the service sends when a stream fails after it started."""
    return encode_frame([(":exception-type", exception_type), (":content-type", "application/json"),
                         (":message-type", "exception")], json.dumps({"message": message}).encode())


# --------------------------------------------------------------------------- SigV4


def verify_signature(ctx: _Context) -> None:
    """Recompute the request's SigV4 signature with botocore; raise _Refused unless it matches."""
    request = ctx.request
    headers = request.headers
    authorization = headers.get("authorization")
    if not authorization:
        raise _Refused(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if authorization.startswith("Bearer "):
        if authorization[len("Bearer "):] != API_KEY:
            raise _Refused(403, "UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined "
                           "prefix")
        return
    found = _AUTHORIZATION.match(authorization)
    if found is None:
        raise _Refused(403, "IncompleteSignatureException", f"Authorization header requires 'Credential', "
                       f"'SignedHeaders' and 'Signature' parameters. Authorization={authorization[:20]}...")
    key = _KEYS.get(found["key"])
    if key is None:
        raise _Refused(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    secret, token = key
    if token is not None and headers.get("x-amz-security-token") != token:
        raise _Refused(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _Refused(403, "IncompleteSignatureException", "X-Amz-Date is missing or malformed") from None
    if abs(datetime.now(UTC) - signed_at) > _SKEW:
        raise _Refused(403, "InvalidSignatureException", f"Signature expired: {stamp} is now earlier or later "
                       "than 15 minutes from the current time.")
    signed = found["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        raise _Refused(403, "InvalidSignatureException", SIGNATURE_MISMATCH)
    if found["service"] != "bedrock" or found["date"] != stamp[:8]:
        raise _Refused(403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'. ")
    url = f"http://{headers['host']}{request.path}" + (f"?{request.query}" if request.query else "")
    aws = AWSRequest(method=request.method, url=url, headers={name: headers[name] for name in signed},
                     data=request.body)
    aws.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(found["key"], secret, token), "bedrock", found["region"])
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    if not hmac.compare_digest(expected, found["signature"]):
        raise _Refused(403, "InvalidSignatureException", SIGNATURE_MISMATCH)


# --------------------------------------------------------------------------- Converse


@route("POST", _MODEL + r"/converse")
def converse(ctx: _Context, match: re.Match[str]) -> _Answer:
    """Answer Converse with one message."""
    return _converse(ctx, match, stream=False)


@route("POST", _MODEL + r"/converse-stream")
def converse_stream(ctx: _Context, match: re.Match[str]) -> _Answer:
    """Answer ConverseStream with an event stream."""
    return _converse(ctx, match, stream=True)


def _converse(ctx: _Context, match: re.Match[str], stream: bool) -> _Answer:
    try:
        verify_signature(ctx)
        payload = _json_object(ctx.request.body)
        if payload is None:
            raise _Refused(400, "SerializationException", "Unable to parse the request body as JSON")
        model = unquote(match["model"])
        check_converse(model, payload)
    except _Refused as refused:
        return refused.answer()
    blocks, stop_reason = _reply(payload, ctx.request.headers)
    usage = {"inputTokens": _token_estimate([payload.get("system"), payload["messages"]]),
             "outputTokens": _output_tokens(blocks)}
    usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
    if stream:
        return _stream_answer(ctx, blocks, stop_reason, usage)
    answer = _json_answer(200, {"output": {"message": {"role": "assistant", "content": blocks}},
                                "stopReason": stop_reason, "usage": usage, "metrics": {"latencyMs": 42}})
    answer.headers.append(("x-amzn-RequestId", str(uuid.uuid4())))
    return answer


def check_converse(model: str, payload: dict[str, Any]) -> None:
    """Raise _Refused(400 ValidationException) for what Converse refuses."""
    report = ParamValidator().validate({"modelId": model, **payload}, _CONVERSE_INPUT).generate_report()
    if report:
        raise _invalid(report.replace("\n", " "))
    messages = payload.get("messages") or []
    if not messages:
        raise _invalid("A conversation must start with a user message. Try again with a conversation that starts "
                       "with a user message.")
    tool_config = payload.get("toolConfig")
    _check_tools(tool_config)
    previous_uses: set[str] = set()
    for index, message in enumerate(messages):
        role = message["role"]
        if index == 0 and role != "user":
            raise _invalid("A conversation must start with a user message. Try again with a conversation that "
                           "starts with a user message.")
        if index and role == messages[index - 1]["role"]:
            raise _invalid("A conversation must alternate between user and assistant roles. Make sure the "
                           "conversation alternates between user and assistant roles and try again.")
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{index}.role: the role {role} is not valid in messages; use system for it")
        if not message["content"]:
            raise _invalid(f"The content field in the Message object at messages.{index} is empty. Add a "
                           "ContentBlock object to the content field and try again.")
        uses, results = _check_blocks(message["content"], index, tool_config is not None)
        if results - previous_uses or (role == "user" and previous_uses - results):
            raise _invalid(f"Expected toolResult blocks at messages.{index}.content for the following Ids: "
                           f"{', '.join(sorted(previous_uses))}")
        previous_uses = uses
    for position, block in enumerate(payload.get("system") or []):
        if "text" in block and not block["text"].strip():
            raise _invalid(f"The text field in the SystemContentBlock object at system.{position} is blank.")
    _check_inference(payload.get("inferenceConfig") or {})
    _check_output(payload.get("outputConfig"))
    _check_additional(model, payload.get("additionalModelRequestFields"))


def _check_blocks(blocks: list[dict[str, Any]], index: int, has_tools: bool) -> tuple[set[str], set[str]]:
    uses: set[str] = set()
    results: set[str] = set()
    for position, block in enumerate(blocks):
        at = f"messages.{index}.content.{position}"
        if "text" in block and not block["text"].strip():
            raise _invalid(f"The text field in the ContentBlock object at {at} is blank. Add text to the text "
                           "field, and try again.")
        if "image" in block:
            image = block["image"]
            if image["format"] not in _IMAGE_FORMATS:
                raise _invalid(f"{at}.image.format: {image['format']} is not one of png, jpeg, gif, webp")
            try:
                base64.b64decode(image["source"].get("bytes", ""), validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"{at}.image.source.bytes is not valid base64") from None
        if ("toolUse" in block or "toolResult" in block) and not has_tools:
            raise _invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
        if "toolUse" in block:
            uses.add(block["toolUse"]["toolUseId"])
        if "toolResult" in block:
            results.add(block["toolResult"]["toolUseId"])
    return uses, results


def _check_tools(config: dict[str, Any] | None) -> None:
    if config is None:
        return
    names = set()
    for position, tool in enumerate(config["tools"]):
        spec = tool.get("toolSpec")
        if spec is None:
            continue
        if not _TOOL_NAME.fullmatch(spec["name"]):
            raise _invalid(f"toolConfig.tools.{position}.toolSpec.name must match [a-zA-Z0-9_-]+")
        schema = spec["inputSchema"].get("json")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _invalid(f"The value at toolConfig.tools.{position}.toolSpec.inputSchema.json.type must be "
                           "one of the following: object.")
        names.add(spec["name"])
    choice = config.get("toolChoice") or {}
    if "tool" in choice and choice["tool"]["name"] not in names:
        raise _invalid(f"toolConfig.toolChoice.tool.name: {choice['tool']['name']} is not one of the tools")


def _check_inference(config: dict[str, Any]) -> None:
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and not 0 <= value <= 1:
            raise _invalid(f"inferenceConfig.{name}: {value} is not in the range 0 to 1")


def _check_output(config: dict[str, Any] | None) -> None:
    text_format = (config or {}).get("textFormat")
    if text_format is None:
        return
    if text_format["type"] != "json_schema":
        raise _invalid("outputConfig.textFormat.type must be json_schema")
    try:
        json.loads(text_format["structure"]["jsonSchema"]["schema"])
    except (KeyError, ValueError):
        raise _invalid("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON schema string") from None


def _check_additional(model: str, fields: Any) -> None:
    if not fields:
        return
    if "anthropic." in model:
        allowed = {"top_k", "thinking", "anthropic_beta"}
    elif "amazon.nova" in model:
        allowed = {"inferenceConfig", "reasoningConfig"}
    else:
        allowed = set()
    extra = sorted(set(fields) - allowed)
    if extra:
        raise _invalid(f"The model returned the following errors: Malformed input request: #: extraneous key "
                       f"[{extra[0]}] is not permitted, please reformat your input and try again.")


def _reply(payload: dict[str, Any], headers: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """Return the answer's content blocks and stop reason."""
    last = payload["messages"][-1]
    results = [block["toolResult"] for block in last["content"] if "toolResult" in block]
    tool = None if results and not headers.get("x-fake-tool-call") else _tool_to_call(payload, headers)
    if tool is not None:
        schema = (tool.get("inputSchema") or {}).get("json") or {}
        use = {"toolUseId": f"tooluse_{uuid.uuid4().hex[:22]}", "name": tool["name"], "input": _fake_input(schema)}
        return [{"toolUse": use}], "tool_use"
    text = BEDROCK_TEXT
    if results:
        said = " ".join(part.get("text") or json.dumps(part.get("json")) for result in results
                        for part in result["content"])
        text = f"The tool said: {said}"
    words = text.split(" ")
    config = payload.get("inferenceConfig") or {}
    for stop in config.get("stopSequences") or []:
        if stop in text:
            return [{"text": text[:text.index(stop)]}], "stop_sequence"
    limit = config.get("maxTokens")
    if limit is not None and limit < len(words):
        return [{"text": " ".join(words[:limit])}], "max_tokens"
    return [{"text": text}], "end_turn"


def _tool_to_call(payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
    config = payload.get("toolConfig") or {}
    specs = {tool["toolSpec"]["name"]: tool["toolSpec"] for tool in config.get("tools", []) if "toolSpec" in tool}
    forced = headers.get("x-fake-tool-call")
    if forced:
        return specs.get(forced) or {"name": forced}
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        return specs[choice["tool"]["name"]]
    if "any" in choice and specs:
        return next(iter(specs.values()))
    return None


def _fake_input(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a deterministic input that fits the tool's schema (its required properties)."""
    properties = schema.get("properties") or {}
    names = schema.get("required") or list(properties)
    values: dict[str, Any] = {}
    for name in names:
        spec = properties.get(name) or {}
        kind = spec.get("type")
        if spec.get("enum"):
            values[name] = spec["enum"][0]
        elif kind in ("integer", "number"):
            values[name] = 3
        elif kind == "boolean":
            values[name] = True
        elif kind == "array":
            values[name] = []
        elif kind == "object":
            values[name] = {}
        else:
            values[name] = f"fake {name}"
    return values


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(len(block["text"].split()) if "text" in block else _token_estimate(block) for block in blocks)


def _stream_answer(ctx: _Context, blocks: list[dict[str, Any]], stop_reason: str, usage: dict[str, int]) -> _Answer:
    """Return the event stream of an answer: text pieces or tool-use pieces, stop, metadata."""
    frames = [event_frame("messageStart", {"role": "assistant"})]
    failure = _STREAM_ERRORS.get((ctx.request.headers.get("x-fake-stream-error") or "").strip().lower())
    for index, block in enumerate(blocks):
        if "toolUse" in block:
            use = block["toolUse"]
            frames.append(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            text = json.dumps(use["input"], separators=(",", ":"))
            middle = len(text) // 2
            for piece in (text[:middle], text[middle:]):
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index,
                                                                "delta": {"toolUse": {"input": piece}}}))
        else:
            words = block["text"].split(" ")
            for position, word in enumerate(words):
                piece = word if position == 0 else " " + word
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index,
                                                                "delta": {"text": piece}}))
                if failure is not None:
                    frames.append(exception_frame(*failure))
                    return _frames_answer(ctx, frames)
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(event_frame("messageStop", {"stopReason": stop_reason}))
    frames.append(event_frame("metadata", {"usage": usage, "metrics": {"latencyMs": 42}}))
    return _frames_answer(ctx, frames)


def _frames_answer(ctx: _Context, frames: list[bytes]) -> _Answer:
    interval = ctx.controls.interval_ms / 1000

    def paced() -> Iterator[bytes]:
        for index, frame in enumerate(frames):
            if index and interval:
                ctx.wait(interval)
            yield frame

    return _Answer(200, headers=[("Content-Type", EVENTSTREAM), ("x-amzn-RequestId", str(uuid.uuid4()))],
                   chunks=paced())


# --------------------------------------------------------------------------- InvokeModel (embeddings)


@route("POST", _MODEL + r"/invoke")
def invoke(ctx: _Context, match: re.Match[str]) -> _Answer:
    """Answer InvokeModel for Titan and Cohere embedding models."""
    try:
        verify_signature(ctx)
        payload = _json_object(ctx.request.body)
        if payload is None:
            raise _invalid("Malformed input request: expected a JSON object, please reformat your input and try again.")
        model = unquote(match["model"])
        if "amazon.titan-embed" in model:
            answer = _titan(model, payload)
        elif "cohere.embed" in model:
            answer = _cohere(model, payload)
        else:
            raise _invalid(f"The fake serves InvokeModel for titan and cohere embedding models only, not {model}")
    except _Refused as refused:
        return refused.answer()
    result = _json_answer(200, answer)
    result.headers.append(("x-amzn-RequestId", str(uuid.uuid4())))
    return result


def _extraneous(payload: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(payload) - allowed)
    if extra:
        raise _invalid(f"Malformed input request: #: extraneous key [{extra[0]}] is not permitted, please "
                       "reformat your input and try again.")


def _titan(model: str, payload: dict[str, Any]) -> dict[str, Any]:
    version2 = "embed-text-v2" in model
    _extraneous(payload, {"inputText", "dimensions", "normalize", "embeddingTypes"} if version2 else {"inputText"})
    text = payload.get("inputText")
    if not isinstance(text, str) or not text:
        raise _invalid("Malformed input request: #/inputText: expected minLength: 1, please reformat your input "
                       "and try again.")
    dimensions = payload.get("dimensions", 1024 if version2 else 1536)
    if dimensions not in (256, 512, 1024, 1536):
        raise _invalid(f"Malformed input request: #/dimensions: {dimensions} is not a valid enum value, please "
                       "reformat your input and try again.")
    return {"embedding": _vector(text, dimensions), "inputTextTokenCount": _token_estimate(text)}


def _cohere(model: str, payload: dict[str, Any]) -> dict[str, Any]:
    _extraneous(payload, {"texts", "images", "inputs", "input_type", "truncate", "embedding_types",
                          "output_dimension", "max_tokens"})
    texts = payload.get("texts")
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts) or len(texts) > 96:
        raise _invalid("Malformed input request: #/texts: expected a list of at most 96 strings, please reformat "
                       "your input and try again.")
    if payload.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
        raise _invalid("Malformed input request: #/input_type: is required and must be one of search_document, "
                       "search_query, classification, clustering, please reformat your input and try again.")
    dimensions = payload.get("output_dimension") or 1024
    if "output_dimension" in payload and "embed-v4" not in model:
        raise _invalid("Malformed input request: #: extraneous key [output_dimension] is not permitted, please "
                       "reformat your input and try again.")
    vectors = [_vector(text, dimensions) for text in texts]
    by_type = payload.get("embedding_types") is not None or "embed-v4" in model
    return {"id": _new_id(""), "texts": texts, "response_type": "embeddings_by_type" if by_type
            else "embeddings_floats", "embeddings": {"float": vectors} if by_type else vectors}
