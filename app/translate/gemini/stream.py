"""Chat streams: a `?alt=sse` stream of GenerateContentResponses as OpenAI chunks."""

from __future__ import annotations

from typing import Any

from app.translate import shape
from app.translate.base import CallFacts, UpstreamBroke
from app.translate.errors import event_error
from app.translate.gemini.answer import _candidate_output, _finish, _indices, _model_of, _usage
from app.translate.sse import SSEReader, json_data


class GeminiChunks:
    """Reads a `?alt=sse` stream (each event a GenerateContentResponse) into OpenAI chunks as it arrives."""

    def __init__(self, facts: CallFacts) -> None:
        self.facts = facts
        self.events = SSEReader()
        self.model: str | None = None
        self.started: set[int] = set()  # choices whose role was sent
        self.calls: dict[int, int] = {}  # choice → tool calls sent so far
        self.finished: set[int] = set()  # choices whose finish chunk was sent
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks these bytes complete."""
        return self._chunks(self.events.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        """Return a last event sent without a blank line after it, then the usage of the last event."""
        chunks = self._chunks(self.events.finish())
        if not self.finished or self.started - self.finished:
            # Google ends every stream with a finishReason: without one the answer was cut short.
            raise UpstreamBroke.cut(self.facts.provider, "its finishReason").after(chunks)
        if self.usage is not None:
            chunks.append(shape.usage_chunk(self.facts, self.usage, model=self.model))
        return chunks

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        try:
            for _, text in events:
                payload = json_data(text)
                for item in payload if isinstance(payload, list) else [payload]:
                    if isinstance(item, dict):
                        chunks += self._response(item)
        except UpstreamBroke as err:
            err.after(chunks)  # the events before the failure still go out
            raise
        return chunks

    def _response(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(payload.get("error"), dict):
            raise UpstreamBroke(event_error(self.facts.provider, payload))
        self.model = _model_of(payload) or self.model
        self.usage = _usage(payload.get("usageMetadata")) or self.usage
        candidates = [c for c in payload.get("candidates") or [] if isinstance(c, dict)]
        feedback = payload.get("promptFeedback")
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            return [self._chunk(0, {"content": ""}), self._chunk(0, {}, shape.CONTENT_FILTER)]
        chunks = []
        for index, candidate in zip(_indices(candidates), candidates, strict=True):
            text, calls = _candidate_output(candidate)
            if text:
                chunks.append(self._chunk(index, {"content": text}))
            for call_id, name, arguments in calls:
                number = self.calls.get(index, 0)
                self.calls[index] = number + 1
                chunks.append(self._chunk(index, {"tool_calls": [shape.tool_call(call_id, name, arguments, number)]}))
            finish = _finish(candidate.get("finishReason"), self.calls.get(index, 0) > 0)
            if finish is not None:
                if index not in self.started:
                    chunks.append(self._chunk(index, {"content": ""}))
                chunks.append(self._chunk(index, {}, finish))
        return chunks

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if finish is not None:
            self.finished.add(index)
        elif index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", **delta}
        result = shape.chunk(self.facts, delta, finish, model=self.model)
        result["choices"][0]["index"] = index
        return result
