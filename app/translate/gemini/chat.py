"""The chat adapter: /v1/chat/completions to generateContent / streamGenerateContent and back."""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.translate import shape
from app.translate.base import CallFacts, NativeRequest
from app.translate.gemini.answer import _candidate_output, _choice, _finish, _indices, _model_of, _usage
from app.translate.gemini.paths import Site
from app.translate.gemini.request import _contents, _generation_config, _tool_config, _tools, _warn_dropped
from app.translate.gemini.stream import GeminiChunks


class GeminiChat:
    """Translates /v1/chat/completions to generateContent / streamGenerateContent and back."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def request(self, body: dict[str, Any], facts: CallFacts) -> NativeRequest:
        """Return the generateContent request for an OpenAI chat body."""
        path = self.site.model_path(facts)
        _warn_dropped(self.site.slug, body)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        system, contents = _contents(messages, self.site)
        native: dict[str, Any] = {"contents": contents}
        if system:
            native["systemInstruction"] = {"parts": system}
        config = _generation_config(body, self.site.slug)
        if config:
            native["generationConfig"] = config
        tools = _tools(body, self.site.slug)
        if tools:
            native["tools"] = [{"functionDeclarations": tools}]
            choice = _tool_config(body)
            if choice:
                native["toolConfig"] = {"functionCallingConfig": choice}
        method = "streamGenerateContent?alt=sse" if facts.stream else "generateContent"
        return NativeRequest(f"{path}:{method}", native)

    def response(self, native: Any, facts: CallFacts) -> dict[str, Any]:
        """Return the OpenAI chat.completion for a GenerateContentResponse."""
        native = native if isinstance(native, dict) else {}
        candidates = [c for c in native.get("candidates") or [] if isinstance(c, dict)]
        choices = []
        for index, candidate in zip(_indices(candidates), candidates, strict=True):
            text, calls = _candidate_output(candidate)
            message = shape.message(text if text or not calls else None,
                                    [shape.tool_call(*call) for call in calls])
            choices.append(_choice(index, message, _finish(candidate.get("finishReason"), bool(calls))))
        if not choices:
            # No candidate: the prompt itself was blocked (promptFeedback.blockReason), or nothing came back.
            blocked = isinstance(native.get("promptFeedback"), dict) and native["promptFeedback"].get("blockReason")
            choices.append(_choice(0, shape.message(""), shape.CONTENT_FILTER if blocked else shape.STOP))
        result = shape.completion(facts, choices[0]["message"], choices[0]["finish_reason"],
                                  _usage(native.get("usageMetadata")), model=_model_of(native))
        result["choices"] = sorted(choices, key=lambda choice: choice["index"])
        return result

    def stream(self, facts: CallFacts) -> GeminiChunks:
        """Return a parser of a `?alt=sse` stream."""
        return GeminiChunks(facts)
