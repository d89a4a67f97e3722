"""Cohere's /v2/chat event stream read into unified chunks."""

from __future__ import annotations

from typing import Any

from app.translate import shape
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.cohere.answer import FINISH, _dig, _fn, _str, logprobs, usage
from app.translate.errors import event_error
from app.translate.sse import SSEReader, json_data

SLUG = "cohere"


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
            raise UpstreamBroke.cut("cohere", "message-end").after(chunks)
        return chunks

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        try:
            for name, text in events:
                payload = json_data(text)
                if not isinstance(payload, dict) or self.ended:
                    continue  # the closing [DONE], or anything after message-end
                kind = payload.get("type") or name
                if kind == "error" or (not kind and "message" in payload):
                    raise UpstreamBroke(event_error(SLUG, payload))
                chunks += self._event(str(kind), payload)
        except UpstreamBroke as err:
            err.after(chunks)  # the events before the failure still go out
            raise
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
