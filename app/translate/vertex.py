"""Vertex AI's unified chat: Google's Gemini models through generateContent, Anthropic's Claude through rawPredict.

Vertex hosts both families under one project and region; the model name says which publisher
serves it. Claude on Vertex takes the Messages API body without `model` (it is in the path) and
with `anthropic_version: vertex-2023-10-16`, and answers exactly as Anthropic does.
"""

from __future__ import annotations

from typing import Any

from app.translate.anthropic import CHAT as ANTHROPIC_CHAT
from app.translate.anthropic.request import native_body
from app.translate.base import CallFacts, ChatAdapter, ChunkParser, NativeRequest
from app.translate.gemini import VERTEX_CHAT as GEMINI_CHAT
from app.translate.gemini.paths import segment, vertex_location

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
_ANTHROPIC_PREFIX = "publishers/anthropic/models/"


def is_claude(model: str | None) -> bool:
    """Return whether Vertex serves this model through Anthropic's publisher."""
    return isinstance(model, str) and model.strip().removeprefix(_ANTHROPIC_PREFIX).startswith("claude")


class VertexChat:
    """Sends each call to the publisher of its model: Anthropic for `claude-*`, else Google's Gemini."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the rawPredict request for a Claude model, else the generateContent one."""
        if not is_claude(facts.model):
            return GEMINI_CHAT.request(body, facts)
        native = native_body(body, facts)
        model = str(native.pop("model")).removeprefix(_ANTHROPIC_PREFIX)
        native["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        method = "streamRawPredict" if facts.stream else "rawPredict"
        return NativeRequest(f"{vertex_location(facts)}/publishers/anthropic/models/{segment(model)}:{method}", native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for the publisher's answer."""
        return self._adapter(facts).response(native, facts)

    def stream(self, facts: CallFacts) -> ChunkParser:
        """Return a parser of the publisher's stream."""
        return self._adapter(facts).stream(facts)

    @staticmethod
    def _adapter(facts: CallFacts) -> ChatAdapter:
        return ANTHROPIC_CHAT if is_claude(facts.model) else GEMINI_CHAT


CHAT = VertexChat()
