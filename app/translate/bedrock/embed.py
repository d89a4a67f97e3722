"""Embeddings: /v1/embeddings to InvokeModel on Titan (amazon.titan-embed-*) or Cohere (cohere.embed-*)."""

from __future__ import annotations

import logging
from typing import Any

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest
from app.translate.bedrock.paths import model_of, model_path

log = logging.getLogger(__package__)  # the package's name, as before the split into modules

TITAN = "titan"
COHERE = "cohere"
# encoding_format is the front's: it encodes the float vectors as base64 when asked.
_EMBED_READ = frozenset({"model", "input", "dimensions", "input_type", "encoding_format"})


class BedrockEmbed:
    """Translates /v1/embeddings to InvokeModel on Titan (amazon.titan-embed-*) or Cohere (cohere.embed-*)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the InvokeModel request for an OpenAI embeddings body."""
        model = model_of(body, facts)
        family = embed_family(model)
        texts = embed_inputs(body.get("input"))
        dimensions = body.get("dimensions")
        native: dict[str, Any]
        if family == TITAN:
            if len(texts) != 1:
                raise BadRequest(f"input: amazon.titan-embed models embed one text per call and {len(texts)} were "
                                 "sent; send one request per text (cohere.embed-* models take up to 96)")
            native = {"inputText": texts[0]}
            if dimensions is not None:
                native["dimensions"] = dimensions
        else:
            # Cohere requires input_type; search_document (embedding a corpus) unless the client names one.
            native = {"texts": texts, "input_type": body.get("input_type") or "search_document"}
            if dimensions is not None:
                native["output_dimension"] = dimensions
        dropped = sorted(name for name, value in body.items() if name not in _EMBED_READ and value is not None)
        if dropped:
            log.warning("bedrock: embedding parameters dropped: %s", ", ".join(dropped))
        return NativeRequest(model_path(model, "invoke"), native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for a Titan or Cohere answer."""
        native = native if isinstance(native, dict) else {}
        if isinstance(native.get("embedding"), list):  # Titan
            tokens = native.get("inputTextTokenCount")
            return shape.embeddings(facts, [native["embedding"]], tokens if isinstance(tokens, int) else None)
        vectors = native.get("embeddings")
        if isinstance(vectors, dict):  # Cohere's embeddings_by_type answer
            vectors = vectors.get("float")
        return shape.embeddings(facts, vectors if isinstance(vectors, list) else [], None)


def embed_family(model: str) -> str:
    """Return which embedding body a model takes; a model of another family is a 400."""
    if "amazon.titan-embed" in model:
        return TITAN
    if "cohere.embed" in model:
        return COHERE
    raise BadRequest(f"embeddings on bedrock support amazon.titan-embed-* and cohere.embed-* models, not {model}")


def embed_inputs(value: Any) -> list[str]:
    """Return the texts of an OpenAI embeddings input (a string or a list of strings)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest("input must be a string or a non-empty list of strings: bedrock embeds text, not token ids")
