"""Chat streams: a ConverseStream binary event stream (decoded by botocore) as OpenAI chunks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError

from app.errors import openai_error
from app.translate import shape
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.bedrock.answer import FINISH, converse_usage
from app.translate.errors import unified_error

PROVIDER = "bedrock"


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
            self.failure = UpstreamBroke(openai_error(f"bedrock error: the event stream is corrupt ({err})"))
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
            raise UpstreamBroke.cut(PROVIDER, "the answer was complete")
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
            raise UpstreamBroke(openai_error("bedrock error: a stream event is not JSON")) from None
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
