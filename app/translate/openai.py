"""The unified chat format as a provider's native one: OpenAI and every OpenAI-compatible slug.

Used when /v1/messages (Anthropic's format) goes to such a provider: the bridge needs the answer
and the stream as unified chunks.
"""

from __future__ import annotations

from typing import Any

from app.errors import openai_error
from app.translate.base import CallFacts, NativeRequest, UpstreamBroke
from app.translate.sse import SSEReader, json_data


class OpenAIChat:
    """Sends the unified chat body as it is; reads the answer and stream as they are."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the body unchanged, asking a stream for its usage (the bridge reports it)."""
        if body.get("stream") is True:
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        return NativeRequest("/chat/completions", body)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the answer unchanged."""
        return native if isinstance(native, dict) else {}

    def stream(self, facts: CallFacts) -> OpenAIChunks:
        """Return a parser of an OpenAI stream."""
        return OpenAIChunks(facts.provider)


class OpenAIChunks:
    """Reads `data:` events into chunk dicts; `[DONE]` ends, an `error` event breaks."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.events = SSEReader()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks these bytes complete."""
        return self._chunks(self.events.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        """Return a last chunk sent without a blank line after it."""
        return self._chunks(self.events.finish())

    def _chunks(self, events: list[tuple[str, str]]) -> list[dict[str, Any]]:
        chunks = []
        try:
            for _, text in events:
                payload = json_data(text)
                if not isinstance(payload, dict):
                    continue  # [DONE]
                if isinstance(payload.get("error"), dict):
                    error = payload["error"]
                    message = error.get("message") or "the stream failed"
                    raise UpstreamBroke(openai_error(f"{self.provider} error: {message}",
                                                     error.get("type") or "api_error", error.get("param"),
                                                     error.get("code")))
                chunks.append(payload)
        except UpstreamBroke as err:
            err.after(chunks)  # the events before the failure still go out
            raise
        return chunks


CHAT = OpenAIChat()
