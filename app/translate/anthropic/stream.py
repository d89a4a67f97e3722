"""The Messages API event stream read into OpenAI chunks."""

from __future__ import annotations

from typing import Any

from app.translate import shape
from app.translate.anthropic.answer import _text, finish_reason, usage
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.errors import event_error
from app.translate.sse import SSEReader, json_data

PROVIDER = "anthropic"


class AnthropicChunks:
    """Reads a Messages API event stream into OpenAI chunks, one event at a time."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.events = SSEReader()
        self.id: str | None = None
        self.model: str | None = None
        self.calls: dict[Any, int] = {}  # content block index → tool call index
        self.counts: dict[str, Any] = {}  # the usage so far (message_delta counts are cumulative)
        self.stopped = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks these bytes complete."""
        return self._chunks(self.events.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        """Return what a last event completes; a stream cut before message_stop is an error, not an end."""
        chunks = self._chunks(self.events.finish())
        if not self.stopped:
            raise UpstreamBroke.cut(PROVIDER, "message_stop").after(chunks)
        return chunks

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        try:
            for name, text in events:
                payload = json_data(text)
                if isinstance(payload, dict):
                    chunks += self._event(str(payload.get("type") or name), payload)
        except UpstreamBroke as err:
            err.after(chunks)  # the events before the failure still go out
            raise
        return chunks

    def _event(self, kind: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "message_start":
            message = payload.get("message") or {}
            self.id, self.model = _text(message.get("id")), _text(message.get("model"))
            self._count(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(payload.get("index"), payload.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(payload.get("index"), payload.get("delta") or {})
        if kind == "message_delta":
            self._count(payload.get("usage"))
            reason = (payload.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, finish_reason(reason))] if reason is not None else []
        if kind == "message_stop":
            self.stopped = True
            counted = usage(self.counts)
            return [shape.usage_chunk(self.facts, counted, id_=self.id, model=self.model)] if counted else []
        if kind == "error":
            raise UpstreamBroke(event_error(PROVIDER, payload))
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, index: Any, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if kind == "tool_use":
            self.calls[index] = position = len(self.calls)
            call = shape.tool_call(str(block.get("id", "")), str(block.get("name", "")), "", index=position)
            return [self._chunk({"tool_calls": [call]})]
        return self._extra({"index": index, **block})

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})] if delta.get("text") else []
        if kind == "input_json_delta":
            piece = delta.get("partial_json")
            if not piece or index not in self.calls:
                return []
            return [self._chunk({"tool_calls": [{"index": self.calls[index], "function": {"arguments": piece}}]})]
        return self._extra({"index": index, "delta": delta})  # thinking_delta, signature_delta, citations_delta

    def _extra(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        return [] if self.facts.strict else [self._chunk({"content_blocks": [entry]})]

    def _count(self, raw: Any) -> None:
        if isinstance(raw, dict):
            self.counts.update({name: value for name, value in raw.items() if value is not None})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return shape.chunk(self.facts, delta, finish, id_=self.id, model=self.model)
