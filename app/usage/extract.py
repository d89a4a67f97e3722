"""Read usage out of parsed answer objects, recognising each provider's shape by the keys it carries.

Shapes understood (streamed events are the same objects, one at a time):

- OpenAI chat/completions/embeddings and compatibles: ``usage.prompt_tokens`` / ``completion_tokens``,
  ``prompt_tokens_details.cached_tokens``; DeepSeek ``prompt_cache_hit_tokens``; Groq ``x_groq.usage``.
- OpenAI Responses: ``usage.input_tokens`` / ``output_tokens`` / ``input_tokens_details.cached_tokens``,
  streamed inside ``response`` of ``response.completed`` and friends.
- Anthropic Messages: ``usage.input_tokens`` plus ``cache_read_input_tokens`` /
  ``cache_creation_input_tokens`` (reported beside the prompt, not inside it); streamed in
  ``message_start.message`` and ``message_delta.usage``.
- Cohere: ``meta.billed_units`` (v1, embed, rerank ``search_units``), v2 chat ``usage.billed_units``,
  v2 stream ``message-end`` ``delta.usage``.
- Gemini / Vertex: ``usageMetadata`` (thoughts count as output, tool-use prompts as input), ``modelVersion``.
- Bedrock Converse ``usage.inputTokens`` / ``outputTokens`` / ``cacheRead|WriteInputTokens``, the
  ConverseStream ``metadata`` event, and InvokeModel streams' ``amazon-bedrock-invocationMetrics``.
- Ollama native: ``prompt_eval_count`` / ``eval_count``.
- Images: a top-level ``data`` list of ``url`` / ``b64_json`` items; transcriptions: ``duration`` beside
  ``text`` (verbose_json) or ``usage.type == "duration"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.usage.model import Usage

# Objects nest usage one or two levels down (message_start.message, response.completed.response,
# message-end.delta); anything deeper is not usage.
MAX_DEPTH = 2
NESTED_KEYS = ("message", "response", "delta", "metadata")
# A JSON-array stream (Gemini without alt=sse) is a list of chunks; a longer list is not a stream of
# answer chunks, and walking it would cost time for nothing.
_MAX_LIST_ITEMS = 10_000
_MAX_MODEL_CHARS = 256


def as_count(value: Any) -> int | None:
    """Return value as a non-negative whole count, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    # Some providers (Cohere billed units) send counts as JSON floats.
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(round(value))
    return None


def _first_count(obj: Mapping[str, Any], *keys: str) -> int | None:
    """Return the first of keys that holds a count."""
    for key in keys:
        count = as_count(obj.get(key))
        if count is not None:
            return count
    return None


def _sum_present(*counts: int | None) -> int | None:
    """Return the sum of the counts that are present, or None when none is."""
    present = [count for count in counts if count is not None]
    return sum(present) if present else None


class UsageAccumulator:
    """Collect usage from the objects of one answer; a later report of a field replaces an earlier one.

    Streams report cumulative counts (Anthropic message_delta, Gemini chunks) or a single final report
    (OpenAI, Cohere, Bedrock), so "last report wins" is right for all of them.
    """

    __slots__ = ("model", "input", "output", "cache_read", "cache_write", "cache_beside_input",
                 "search_units", "images", "audio_seconds")

    def __init__(self) -> None:
        self.model: str | None = None
        self.input: int | None = None
        self.output: int | None = None
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        # True when the provider reports cache reads/writes beside the prompt count (Anthropic style)
        # rather than as parts of it (OpenAI, Gemini style).
        self.cache_beside_input = False
        self.search_units: int | None = None
        self.images: int | None = None
        self.audio_seconds: float | None = None

    def absorb(self, obj: Any, depth: int = 0, take_model: bool = True) -> None:
        """Take whatever usage and model the object (or a JSON-array stream of objects) carries."""
        if isinstance(obj, list):
            if depth == 0:
                for item in obj[:_MAX_LIST_ITEMS]:
                    self.absorb(item, 1)
            return
        if not isinstance(obj, dict) or depth > MAX_DEPTH:
            return
        # The outermost model of an object wins: a nested one (say in user metadata) must not replace it.
        if take_model and self._take_model(obj):
            take_model = False
        self._take_usage_blocks(obj)
        if depth == 0:
            self._take_images(obj)
            self._take_duration(obj)
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict):
                self.absorb(inner, depth + 1, take_model)

    def to_usage(self, request_model: str | None) -> Usage:
        """Return the collected usage, input counting the whole prompt, model falling back to the request's."""
        input_tokens = self.input
        if self.cache_beside_input and (self.cache_read is not None or self.cache_write is not None):
            input_tokens = (input_tokens or 0) + (self.cache_read or 0) + (self.cache_write or 0)
        return Usage(model=self.model or request_model or None, input_tokens=input_tokens,
                     output_tokens=self.output, cache_read_tokens=self.cache_read,
                     cache_write_tokens=self.cache_write, search_units=self.search_units, images=self.images,
                     audio_seconds=self.audio_seconds)

    def _take_model(self, obj: dict[str, Any]) -> bool:
        for key in ("model", "modelVersion"):
            value = obj.get(key)
            if isinstance(value, str) and 0 < len(value) <= _MAX_MODEL_CHARS:
                self.model = value
                return True
        return False

    def _take_usage_blocks(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._read_usage(usage)
        gemini = obj.get("usageMetadata")
        if isinstance(gemini, dict):
            self._read_gemini(gemini)
        meta = obj.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("billed_units"), dict):
            self._read_cohere(meta)
        groq = obj.get("x_groq")
        if isinstance(groq, dict) and isinstance(groq.get("usage"), dict):
            self._read_usage(groq["usage"])
        bedrock = obj.get("amazon-bedrock-invocationMetrics")
        if isinstance(bedrock, dict):
            self._read_bedrock_metrics(bedrock)
        if "prompt_eval_count" in obj or "eval_count" in obj:
            self._set_tokens(as_count(obj.get("prompt_eval_count")), as_count(obj.get("eval_count")))

    def _set_tokens(self, input_tokens: int | None, output_tokens: int | None) -> None:
        if input_tokens is not None:
            self.input = input_tokens
        if output_tokens is not None:
            self.output = output_tokens

    def _read_usage(self, usage: dict[str, Any]) -> None:
        if isinstance(usage.get("billed_units"), dict):
            self._read_cohere(usage)
            return
        if usage.get("type") == "duration":
            seconds = usage.get("seconds")
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
                self.audio_seconds = float(seconds)
            return
        prompt = _first_count(usage, "prompt_tokens", "input_tokens", "inputTokens")
        completion = _first_count(usage, "completion_tokens", "output_tokens", "outputTokens")
        if prompt is None and completion is None:
            # Embedding and rerank APIs that report one number (Voyage) bill it all as input.
            prompt = _first_count(usage, "total_tokens", "totalTokens")
        self._set_tokens(prompt, completion)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        cached_part = as_count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if cached_part is None:
            cached_part = as_count(usage.get("prompt_cache_hit_tokens"))
        read_beside = _first_count(usage, "cache_read_input_tokens", "cacheReadInputTokens")
        write_beside = _first_count(usage, "cache_creation_input_tokens", "cacheWriteInputTokens")
        if read_beside is None and write_beside is None:
            if cached_part is not None:
                self.cache_read = cached_part
                self.cache_beside_input = False
            return
        total = _first_count(usage, "total_tokens", "totalTokens")
        # Anthropic-style fields are reported beside the prompt, unless the answer says otherwise: an
        # OpenAI-style cached_tokens detail, or a total that already equals prompt + completion, means
        # a translator has folded them into the prompt count. The gateway's own translated answers are
        # read so too (app/usage/report.py), and so are another gateway's relayed through this one.
        folded = cached_part is not None or (
            total is not None and prompt is not None and completion is not None
            and total == prompt + completion and bool(read_beside or write_beside))
        self.cache_beside_input = not folded
        self.cache_read = read_beside if read_beside is not None else cached_part
        if write_beside is not None:
            self.cache_write = write_beside

    def _read_gemini(self, meta: dict[str, Any]) -> None:
        # promptTokenCount already includes cachedContentTokenCount; thoughts are billed as output and
        # tool-use prompts as input, but neither is inside the two main counts.
        self._set_tokens(
            _sum_present(as_count(meta.get("promptTokenCount")), as_count(meta.get("toolUsePromptTokenCount"))),
            _sum_present(as_count(meta.get("candidatesTokenCount")), as_count(meta.get("thoughtsTokenCount"))))
        cached = as_count(meta.get("cachedContentTokenCount"))
        if cached is not None:
            self.cache_read = cached
            self.cache_beside_input = False

    def _read_cohere(self, container: dict[str, Any]) -> None:
        billed = container["billed_units"]
        tokens = container.get("tokens")
        tokens = tokens if isinstance(tokens, dict) else {}
        # Billed units are what Cohere charges; raw token counts only stand in when no billed count came.
        billed_in = as_count(billed.get("input_tokens"))
        billed_out = as_count(billed.get("output_tokens"))
        self._set_tokens(billed_in if billed_in is not None else as_count(tokens.get("input_tokens")),
                         billed_out if billed_out is not None else as_count(tokens.get("output_tokens")))
        search_units = as_count(billed.get("search_units"))
        if search_units is not None:
            self.search_units = search_units

    def _read_bedrock_metrics(self, metrics: dict[str, Any]) -> None:
        self._set_tokens(as_count(metrics.get("inputTokenCount")), as_count(metrics.get("outputTokenCount")))
        read = as_count(metrics.get("cacheReadInputTokenCount"))
        write = as_count(metrics.get("cacheWriteInputTokenCount"))
        if read is not None or write is not None:
            self.cache_beside_input = True
            if read is not None:
                self.cache_read = read
            if write is not None:
                self.cache_write = write

    def _take_images(self, obj: dict[str, Any]) -> None:
        data = obj.get("data")
        if not isinstance(data, list) or not data:
            return
        if all(isinstance(item, dict) and ("b64_json" in item or "url" in item) for item in data):
            self.images = len(data)

    def _take_duration(self, obj: dict[str, Any]) -> None:
        duration = obj.get("duration")
        if (isinstance(duration, (int, float)) and not isinstance(duration, bool) and math.isfinite(duration)
                and duration >= 0 and isinstance(obj.get("text"), str)):
            self.audio_seconds = float(duration)
