"""OpenAI chat completions to and from Anthropic's Messages API: the `anthropic` adapter of /v1/chat/completions.

The per-parameter choices (kept, mapped, dropped with a warning, refused) are written down in
docs/translation/anthropic.md; keep the two in step.
"""

from __future__ import annotations

from typing import Any

from app.translate.anthropic.answer import completion
from app.translate.anthropic.request import DEFAULT_MAX_TOKENS, native_body
from app.translate.anthropic.stream import AnthropicChunks
from app.translate.base import CallFacts, NativeRequest

__all__ = ["CHAT", "DEFAULT_MAX_TOKENS", "AnthropicChat", "AnthropicChunks"]


class AnthropicChat:
    """Translates OpenAI chat bodies to Messages API bodies and Messages answers back."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the Messages API request for an OpenAI chat body."""
        return NativeRequest("/messages", native_body(body, facts))

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI `chat.completion` for a Messages API answer."""
        return completion(native if isinstance(native, dict) else {}, facts)

    def stream(self, facts: CallFacts) -> AnthropicChunks:
        """Return a parser of one Messages API event stream."""
        return AnthropicChunks(facts)


CHAT = AnthropicChat()
