"""Bedrock: /v1/chat/completions over the Converse API, /v1/embeddings over InvokeModel (Titan, Cohere).

Converse (POST /model/{modelId}/converse and /converse-stream) is the one chat API every bedrock
chat model speaks. Its streamed answer is AWS's binary event stream, decoded with botocore's own
decoder as the bytes arrive. The model id goes into the path percent-encoded, so ARNs of
inference profiles and provisioned models (with `:` and `/`) work.
"""

from __future__ import annotations

from typing import Any

from app.translate.base import CallFacts, NativeRequest
from app.translate.bedrock.answer import completion
from app.translate.bedrock.embed import BedrockEmbed
from app.translate.bedrock.paths import model_of, model_path
from app.translate.bedrock.request import converse_request
from app.translate.bedrock.stream import PROVIDER, ConverseChunks

__all__ = ["CHAT", "EMBED", "PROVIDER", "BedrockEmbed", "ConverseChat", "ConverseChunks", "model_of", "model_path"]


class ConverseChat:
    """Translates the unified chat format to Converse and back (whole answers and event streams)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the Converse request for an OpenAI chat body."""
        return converse_request(body, facts)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a Converse answer."""
        return completion(native, facts)

    def stream(self, facts: CallFacts) -> ConverseChunks:
        """Return a parser of one ConverseStream event stream."""
        return ConverseChunks(facts)


CHAT = ConverseChat()
EMBED = BedrockEmbed()
