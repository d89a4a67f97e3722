"""The shapes every provider adapter shares: what it knows of a call, what it sends, what it parses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.call.native import NativeRequest as NativeRequest  # defined below translate, so the call types can hold one
from app.errors import openai_error


@dataclass(frozen=True)
class CallFacts:
    """What an adapter knows of the call it translates."""

    provider: str                 # the target's slug, e.g. "anthropic"
    model: str | None             # the model the client asked for (the catalog's `@name/` prefix already gone)
    stream: bool                  # the client asked for a stream
    id: str                       # the id of the unified answer ("chatcmpl-..."), when the provider gives none
    created: int                  # unix seconds, for `created`
    strict: bool = True           # x-portkey-strict-open-ai-compliance: extras left out unless False
    include_usage: bool = False   # stream_options.include_usage asked for
    options: Mapping[str, str] = field(default_factory=dict)  # the target's provider options (region, project...)


class ChunkParser(Protocol):
    """Reads a provider's streamed answer, piece by piece, into OpenAI `chat.completion.chunk` dicts."""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Return the chunks completed by these bytes (an event may be split across reads)."""
        ...

    def finish(self) -> list[dict[str, Any]]:
        """Return what the end of the stream completes (a last usage chunk, say)."""
        ...


class ChatAdapter(Protocol):
    """Translates `/v1/chat/completions` to and from one provider's native chat API."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the native request for an OpenAI chat body (raise BadRequest for what cannot be sent)."""
        ...

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI `chat.completion` for the provider's JSON answer."""
        ...

    def stream(self, facts: CallFacts) -> ChunkParser:
        """Return a parser for one streamed answer."""
        ...


class EmbedAdapter(Protocol):
    """Translates `/v1/embeddings` to and from one provider's native embedding API."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the native request for an OpenAI embeddings body."""
        ...

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for the provider's JSON answer."""
        ...


class UpstreamBroke(Exception):
    """The provider's stream said it failed (an error event); carries the unified error to send on."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message")))
        self.error = error
        self.before: list[dict[str, Any]] = []  # chunks the same bytes completed before the failure

    def after(self, chunks: list[dict[str, Any]]) -> UpstreamBroke:
        """Return this failure carrying the chunks that came before it, so the client still gets them."""
        self.before = chunks + self.before
        return self

    @classmethod
    def cut(cls, provider: str, missing: str) -> UpstreamBroke:
        """Return the failure of a stream that ended before its last event (`missing`): cut, not finished."""
        return cls(openai_error(f"{provider} error: the stream ended before {missing}"))
