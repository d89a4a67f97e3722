"""One translated call: the native request out, and the provider's answer back in the client's format."""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import replace
from typing import Any

from app.errors import BadRequest, GatewayError, UpstreamUnreachable
from app.http.body import Body
from app.pipeline.answer import Answer
from app.translate.base import CallFacts, ChunkParser, NativeRequest, UpstreamBroke
from app.translate.errors import unified_error
from app.translate.fronts import Front, StreamWriter, dumps

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 << 20  # a whole answer is parsed in memory to be translated; past this it is refused
_DROPPED = frozenset({"content-length", "content-type", "content-encoding", "transfer-encoding"})
_JSON = ("Content-Type", "application/json")
_SSE = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]


class Translator:
    """Translates one leaf's call: the client's body to the native request, the native answer back."""

    def __init__(self, adapter: Any, front: Front, facts: CallFacts) -> None:
        self.adapter = adapter
        self.front = front
        self.facts = facts
        self.native: NativeRequest | None = None

    def request(self, data: Any) -> Body:
        """Return the native body for the client's parsed JSON body (and keep the native path)."""
        if not isinstance(data, dict):
            raise BadRequest(f"{self.front.endpoint} needs a JSON object body with Content-Type: application/json")
        unified = self.front.request(data)
        self.facts = with_body(self.facts, unified)
        self.native = self.adapter.request(unified, self.facts)
        return Body(dumps(self.native.body))

    def answer(self, answer: Answer) -> Answer:
        """Return the answer in the client's format: an error body, a translated stream, or a whole body."""
        headers = [(k, v) for k, v in answer.headers if k.lower() not in _DROPPED]
        if not 200 <= answer.status < 300:
            raw = self._whole(answer, 1 << 20)
            error = unified_error(self.facts.provider, answer.status, raw, answer.header("x-amzn-errortype"))
            return Answer.whole(answer.status, dumps(self.front.error(error)), headers + [_JSON], answer.reason)
        if self.facts.stream and _is_stream(answer.header("content-type")):
            transform = StreamTransform(self.adapter.stream(self.facts), self.front.stream(self.facts),
                                        self.facts.provider, answer.header("content-encoding"))
            first = transform.feed(answer.first_chunk)
            return Answer(answer.status, answer.reason, headers + _SSE, first, answer.response, transform)
        raw = self._whole(answer, MAX_ANSWER_BYTES)
        try:
            native = json.loads(raw)
        except ValueError:
            raise UpstreamUnreachable(f"{self.facts.provider} answered {answer.status} with a body that is not "
                                      "JSON; it could not be translated") from None
        try:
            translated = self.front.response(self.adapter.response(native, self.facts), self.facts)
        except GatewayError:
            raise
        except Exception:  # noqa: BLE001 - an answer we cannot read is the upstream's failure, not a 500
            log.exception("could not translate the %s answer", self.facts.provider)
            raise UpstreamUnreachable(f"{self.facts.provider} answered {answer.status} with a body that could not "
                                      "be translated") from None
        return Answer.whole(answer.status, dumps(translated), headers + [_JSON], answer.reason)

    def _whole(self, answer: Answer, limit: int) -> bytes:
        if not answer.read_all(limit):
            answer.discard()
            raise UpstreamUnreachable(f"{self.facts.provider} answered with more than {limit >> 20} MiB; "
                                      "too large to translate")
        try:
            return answer.decoded_body()
        except zlib.error:
            raise UpstreamUnreachable(f"{self.facts.provider} answered with a body that does not decompress") from None


class StreamTransform:
    """Turns a provider's stream into the client's, event by event, as the bytes arrive."""

    def __init__(self, parser: ChunkParser, writer: StreamWriter, provider: str, encoding: str | None) -> None:
        self.parser = parser
        self.writer = writer
        self.provider = provider
        self.broken = False
        encoding = (encoding or "identity").lower()
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS) \
            if encoding in ("gzip", "x-gzip", "deflate") else None

    def feed(self, data: bytes) -> bytes:
        """Return the client's bytes for these upstream bytes (b"" while an event is still incomplete)."""
        if self.broken or not data:
            return b""
        try:
            if self.inflater is not None:
                data = self.inflater.decompress(data)
            return self.writer.write(self.parser.feed(data))
        except UpstreamBroke as err:
            return self._break(err.error)
        except Exception:  # noqa: BLE001 - a stream we cannot read must end in an error event, not a cut
            log.exception("could not translate the %s stream", self.provider)
            return self._break({"message": f"{self.provider} error: the stream could not be translated",
                                "type": "api_error", "param": None, "code": None})

    def finish(self) -> bytes:
        """Return what the end of the upstream stream completes, and the client's end of stream."""
        if self.broken:
            return b""
        try:
            return self.writer.write(self.parser.finish()) + self.writer.end()
        except UpstreamBroke as err:
            return self._break(err.error)
        except Exception:  # noqa: BLE001
            log.exception("could not finish the %s stream", self.provider)
            return self._break({"message": f"{self.provider} error: the stream ended in a way that could not "
                                "be translated", "type": "api_error", "param": None, "code": None})

    def _break(self, error: dict[str, Any]) -> bytes:
        self.broken = True
        return self.writer.error(error)


def with_body(facts: CallFacts, body: dict[str, Any]) -> CallFacts:
    """Return the facts completed from the unified body: model, stream, include_usage."""
    model = body.get("model")
    if isinstance(model, str) and model.startswith("@") and "/" in model:
        model = model.partition("/")[2]  # a catalog `@name/model`: the provider knows only the model
    options = body.get("stream_options")
    return replace(facts, model=model if isinstance(model, str) else None, stream=body.get("stream") is True,
                   include_usage=isinstance(options, dict) and options.get("include_usage") is True)


def _is_stream(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media != "application/json" and ("event-stream" in media or "eventstream" in media
                                              or "stream" in media or "json-seq" in media or "ndjson" in media)
