"""OpenAI embeddings to and from Cohere's /v2/embed."""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest, UpstreamUnreachable
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest
from app.translate.cohere.answer import _count, _dig
from app.translate.cohere.request import _warn_dropped

EMBED_PATH = "/v2/embed"
DEFAULT_INPUT_TYPE = "search_document"  # what an OpenAI embeddings call means when it says nothing
_EMBED_NATIVE = ("truncate", "priority", "max_tokens")
_EMBED_MAPPED = frozenset({"model", "input", "input_type", "dimensions", "encoding_format"})


class CohereEmbed:
    """Translates /v1/embeddings to and from Cohere's /v2/embed."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the /v2/embed request for an OpenAI embeddings body."""
        native: dict[str, Any] = {}
        if body.get("model") is not None:
            native["model"] = body["model"]
        native["texts"] = embed_texts(body.get("input"))
        # Not OpenAI's: a client may say what its texts are for; the default suits stored documents.
        native["input_type"] = body.get("input_type") or DEFAULT_INPUT_TYPE
        encoding = body.get("encoding_format")
        if encoding not in (None, "float", "base64"):
            raise BadRequest("encoding_format must be float or base64")
        # Cohere's base64 is OpenAI's too (the float32 bytes of each vector, base64-encoded).
        native["embedding_types"] = ["base64" if encoding == "base64" else "float"]
        if body.get("dimensions") is not None:
            native["output_dimension"] = body["dimensions"]
        for name in _EMBED_NATIVE:
            if body.get(name) is not None:
                native[name] = body[name]
        _warn_dropped(body, _EMBED_MAPPED | set(_EMBED_NATIVE), EMBED_PATH, set())
        return NativeRequest(EMBED_PATH, native, from_root=True)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for a /v2/embed answer."""
        embeddings = native.get("embeddings") if isinstance(native, dict) else None
        if not isinstance(embeddings, dict):
            raise UpstreamUnreachable("cohere answered with JSON that is not an embed response")
        tokens = _count(_dig(native, "meta", "billed_units").get("input_tokens"))
        floats = embeddings.get("float")
        if isinstance(floats, list):
            return shape.embeddings(facts, floats, tokens)
        encoded = embeddings.get("base64")
        if not isinstance(encoded, list):
            raise UpstreamUnreachable("cohere answered without float or base64 embeddings")
        result = shape.embeddings(facts, [], tokens)
        result["data"] = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)]
        return result


def embed_texts(value: Any) -> list[str]:
    """Return Cohere's texts for an OpenAI input: a string or a list of strings (token arrays cannot be sent)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    if value is None:
        raise BadRequest("input is required")
    raise BadRequest("input: cohere embeds text only; send a string or a list of strings, not token arrays")
