"""The Anthropic Messages front: /v1/messages to any provider, bridged through the unified chat format.

The client speaks Anthropic's Messages API; the provider's chat adapter speaks the unified (OpenAI)
chat format. This front turns the client's body into a unified chat request, and the unified answer,
stream and errors back into Anthropic's shapes, so the same client code works whatever the provider.
"""

from __future__ import annotations

from typing import Any

from app.translate import messages_answer
from app.translate.base import CallFacts
from app.translate.messages_request import unified_request
from app.translate.messages_stream import MessagesStream


class MessagesFront:
    """Anthropic's Messages format on the client's side of a translated chat call."""

    endpoint = "chatComplete"

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the unified chat request for an Anthropic Messages body."""
        return unified_request(body)

    def response(self, unified: dict[str, Any], facts: CallFacts) -> dict[str, Any]:
        """Return the Anthropic message for a unified `chat.completion`."""
        return messages_answer.message(unified, facts)

    def stream(self, facts: CallFacts) -> MessagesStream:
        """Return a writer of Anthropic's stream events."""
        return MessagesStream(facts)

    def error(self, error: dict[str, Any]) -> dict[str, Any]:
        """Return Anthropic's error body for a unified error body."""
        return messages_answer.error_body(error)


FRONT = MessagesFront()
