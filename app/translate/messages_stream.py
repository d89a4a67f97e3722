"""Unified chat chunks as Anthropic's Messages stream: message_start, content blocks, message_delta, message_stop."""

from __future__ import annotations

import uuid
from typing import Any

from app.translate import messages_answer as answer
from app.translate.base import CallFacts
from app.translate.sse import named_event
from app.usage.report import UsageReport

_TEXT = "text"
_TOOL = "tool_use"


class MessagesStream:
    """Writes one streamed answer as Anthropic events; blocks open and close as the kind of delta changes."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.started = False
        self.open: int | None = None      # index of the open content block
        self.open_kind: str | None = None
        self.blocks = 0                   # content blocks started so far
        self.calls: dict[int, tuple[str, int]] = {}  # unified tool-call index → (call id, content block index)
        self.finish: tuple[str, str | None] | None = None
        self.usage: dict[str, Any] | None = None
        self.delta_sent = False
        self.report = UsageReport()  # message_start and message_delta carry the usage the client reads

    def write(self, chunks: list[dict[str, Any]]) -> bytes:
        """Return the events of these unified chunks."""
        out: list[bytes] = []
        for chunk in chunks:
            if not self.started:
                out.append(self._start(chunk))
            if isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    out.extend(self._choice(choice))
            # The usage chunk follows the finish chunk: message_delta waits for both (or for the end).
            if self.finish is not None and self.usage is not None and not self.delta_sent:
                out.append(self._message_delta())
        return b"".join(out)

    def error(self, error: dict[str, Any]) -> bytes:
        """Return Anthropic's `error` event for a unified error."""
        return named_event("error", answer.error_body(error))

    def end(self) -> bytes:
        """Return what closes the stream: the open block, message_delta if still held, message_stop."""
        out = [] if self.started else [self._start({})]
        out.extend(self._close())
        if not self.delta_sent:
            out.append(self._message_delta())
        out.append(named_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        usage = answer.usage(chunk.get("usage")) if isinstance(chunk.get("usage"), dict) else \
            {"input_tokens": 0, "output_tokens": 0}
        message: dict[str, Any] = {
            "id": answer.message_id(chunk.get("id"), self.facts), "type": "message", "role": "assistant",
            "model": chunk.get("model") or self.facts.model or "", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": usage}
        return self._reported("message_start", {"type": "message_start", "message": message})

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        delta = answer.as_dict(choice.get("delta"))
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                out.extend(self._text(text))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out.extend(self._tool(call))
        if choice.get("finish_reason"):
            out.extend(self._close())
            self.finish = answer.stop_reason(choice)
        return out

    def _text(self, text: str) -> list[bytes]:
        out = []
        if self.open_kind != _TEXT:
            out.extend(self._close())
            out.append(self._open(_TEXT, {"type": "text", "text": ""}))
        out.append(self._delta({"type": "text_delta", "text": text}, self.open))
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        key = call.get("index")
        call_id = call.get("id")
        if not isinstance(key, int):
            # Without an index, a call with an id is a new one; without either it continues the last.
            key = max(self.calls, default=-1) + (1 if call_id or not self.calls else 0)
        function = answer.as_dict(call.get("function"))
        # Some servers reuse index 0 for every call: a new id at a known index is still a new call.
        if key not in self.calls or (call_id and call_id != self.calls[key][0]):
            out.extend(self._close())
            block_id = str(call_id or f"toolu_{uuid.uuid4().hex[:24]}")
            out.append(self._open(_TOOL, {"type": "tool_use", "id": block_id,
                                          "name": str(function.get("name") or ""), "input": {}}))
            self.calls[key] = (block_id, self.blocks - 1)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}, self.calls[key][1]))
        return out

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        self.open, self.open_kind = self.blocks, kind
        self.blocks += 1
        return named_event("content_block_start", {"type": "content_block_start", "index": self.open,
                                                   "content_block": block})

    def _delta(self, delta: dict[str, Any], index: int | None) -> bytes:
        return named_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open, self.open_kind = self.open, None, None
        return [named_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _message_delta(self) -> bytes:
        self.delta_sent = True
        reason, sequence = self.finish or ("end_turn", None)
        usage = answer.usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        return self._reported("message_delta", {"type": "message_delta",
                                                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                "usage": usage})

    def _reported(self, name: str, payload: dict[str, Any]) -> bytes:
        """Return an event that carries usage, its object reported first."""
        self.report.event(payload)
        return named_event(name, payload)
