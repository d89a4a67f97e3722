"""Cohere API v2: /v1/chat/completions as POST /v2/chat, /v1/embeddings as POST /v2/embed.

Cohere's base URL ends in /v1 while these endpoints live under /v2, so the native paths replace
the base's version segment (NativeRequest.from_root); a custom host's path prefix stays
(`https://h/proxy/cohere/v1` → `https://h/proxy/cohere/v2/chat`). Field by field choices:
docs/translation/cohere.md.
"""

from __future__ import annotations

from typing import Any

from app.translate.base import CallFacts, NativeRequest
from app.translate.cohere.answer import chat_completion
from app.translate.cohere.embed import CohereEmbed
from app.translate.cohere.request import chat_request
from app.translate.cohere.stream import CohereChunks

__all__ = ["CHAT", "EMBED", "CohereChat", "CohereEmbed"]


class CohereChat:
    """Translates /v1/chat/completions to and from Cohere's /v2/chat."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the /v2/chat request for an OpenAI chat body."""
        return chat_request(body)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a /v2/chat answer."""
        return chat_completion(native, facts)

    def stream(self, facts: CallFacts) -> CohereChunks:
        """Return a parser of one /v2/chat event stream."""
        return CohereChunks(facts)


CHAT = CohereChat()
EMBED = CohereEmbed()
