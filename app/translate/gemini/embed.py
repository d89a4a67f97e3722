"""Embeddings: /v1/embeddings to embedContent / batchEmbedContents (Gemini API) or `:predict` (Vertex)."""

from __future__ import annotations

import logging
from typing import Any

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest
from app.translate.gemini.paths import GEMINI_API, VERTEX

log = logging.getLogger(__package__)  # the package's name, as before the split into modules


def _inputs(body: dict[str, Any], slug: str) -> tuple[list[str], bool]:
    """Return the texts to embed and whether the client sent one (not a list)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value, False
    if isinstance(value, list) and value:
        raise BadRequest(f"input: {slug} embeds text only; token arrays are not supported")
    raise BadRequest("input must be a string or a non-empty list of strings")


def _embed_options(body: dict[str, Any], slug: str) -> dict[str, Any]:
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise BadRequest(f"encoding_format must be float or base64, not {str(encoding)[:20]!r}")
    dropped = sorted(set(body) - {"model", "input", "dimensions", "encoding_format"})
    if dropped:
        log.warning("%s: dropped parameters it does not take: %s", slug, ", ".join(dropped))
    dimensions = body.get("dimensions")
    return {"outputDimensionality": dimensions} if dimensions is not None else {}


class GeminiEmbed:
    """Translates /v1/embeddings to embedContent (one input) or batchEmbedContents (several)."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the embedContent or batchEmbedContents request."""
        path = GEMINI_API.model_path(facts)
        texts, single = _inputs(body, GEMINI_API.slug)
        options = _embed_options(body, GEMINI_API.slug)
        if single or len(texts) == 1:
            return NativeRequest(f"{path}:embedContent", {"content": {"parts": [{"text": texts[0]}]}, **options})
        # Each request names its model again, as "models/<id>" (the path's resource name).
        model = path.removeprefix("/v1beta/")
        return NativeRequest(f"{path}:batchEmbedContents", {"requests": [
            {"model": model, "content": {"parts": [{"text": text}]}, **options} for text in texts]})

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for an embedContent or batchEmbedContents answer."""
        native = native if isinstance(native, dict) else {}
        if isinstance(native.get("embedding"), dict):
            vectors = [native["embedding"].get("values") or []]
        else:
            vectors = [e.get("values") or [] for e in native.get("embeddings") or [] if isinstance(e, dict)]
        meta = native.get("usageMetadata")
        tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
        return shape.embeddings(facts, vectors, tokens)


class VertexEmbed:
    """Translates /v1/embeddings to Vertex's `:predict` with one instance per input."""

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the predict request."""
        path = VERTEX.model_path(facts)
        texts, _ = _inputs(body, VERTEX.slug)
        native: dict[str, Any] = {"instances": [{"content": text} for text in texts]}
        options = _embed_options(body, VERTEX.slug)
        if options:
            native["parameters"] = options
        return NativeRequest(f"{path}:predict", native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI embeddings list for predictions[].embeddings, counting statistics.token_count."""
        native = native if isinstance(native, dict) else {}
        vectors = []
        tokens: int | None = None
        for prediction in native.get("predictions") or []:
            embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
            embeddings = embeddings if isinstance(embeddings, dict) else {}
            vectors.append(embeddings.get("values") or [])
            count = (embeddings.get("statistics") or {}).get("token_count")
            if isinstance(count, (int, float)):
                tokens = (tokens or 0) + int(count)
        return shape.embeddings(facts, vectors, tokens)
