"""One translated call: the native request out, and the provider's answer back in the client's format."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import replace
from itertools import chain
from typing import Any

from app.call.answer import Answer, bomb_message, undecodable_message
from app.errors import BadRequest, GatewayError, UpstreamUnreachable, openai_error
from app.http.body import Body
from app.translate.base import CallFacts, ChunkParser, NativeRequest, UpstreamBroke
from app.translate.errors import unified_error
from app.translate.fronts import Front, StreamWriter, dumps, refuse_lone_surrogates
from app.usage.inflate import Inflater, UnsupportedEncoding, encoding_of
from app.usage.model import Usage
from app.usage.report import UsageReport

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 << 20  # a whole answer is parsed in memory to be translated; past this it is refused
# A compressed answer (the gateway asks for none) inflates to at most this, and a compressed stream to at most
# MAX_ANSWER_BYTES, a step at a time: a compression bomb costs bounded memory and work (docs/security.md).
MAX_INFLATED_BYTES = 32 << 20
MAX_ERROR_BYTES = 1 << 20  # an error body, read and inflated, before its message is masked and relayed
STREAM_STEP = 256 * 1024  # inflated bytes of a compressed stream translated per read of the relay
_DROPPED = frozenset({"content-length", "content-type", "content-encoding", "transfer-encoding"})
_JSON = ("Content-Type", "application/json")
_SSE = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]


class Translator:
    """Translates one leaf's call: the client's body to the native request, the native answer back."""

    def __init__(self, adapter: Any, front: Front, facts: CallFacts, route: str | None = None) -> None:
        self.adapter = adapter
        self.front = front
        self.facts = facts
        self.route = route  # the path the client called, for error messages
        self.native: NativeRequest | None = None

    def request(self, data: Any) -> Body:
        """Return the native body for the client's parsed JSON body (and keep the native path)."""
        if not isinstance(data, dict):
            raise BadRequest(f"{self.route or 'This route'} needs a JSON object body with Content-Type: "
                             "application/json")
        refuse_lone_surrogates(data)
        unified = self.front.request(data)
        self.facts = with_body(self.facts, unified)
        self.native = self.adapter.request(unified, self.facts)
        return Body(dumps(self.native.body))

    def answer(self, answer: Answer) -> Answer:
        """Return the answer in the client's format: an error body, a translated stream, or a whole body.

        The answer carries its usage as data (`Answer.usage`), read from what it tells the client: the byte
        tap is not needed for it (docs/observability.md).
        """
        headers = [(k, v) for k, v in answer.headers if k.lower() not in _DROPPED]
        if not 200 <= answer.status < 300:
            raw = self._whole(answer, MAX_ERROR_BYTES, MAX_ERROR_BYTES)
            error = unified_error(self.facts.provider, answer.status, raw, answer.header("x-amzn-errortype"))
            return _reported(answer.status, self.front.error(error), headers, answer.reason)
        if self.facts.stream and _is_stream(answer.header("content-type")):
            transform = StreamTransform(self.adapter.stream(self.facts), self.front.stream(self.facts),
                                        self.facts.provider, answer.header("content-encoding"), answer.source)
            stream = Answer(answer.status, answer.reason, headers + _SSE, b"", answer.response, transform,
                            source=answer.source, usage=transform)
            stream.first_chunk = first_output(stream, transform, answer.first_chunk)
            return stream
        raw = self._whole(answer, MAX_ANSWER_BYTES, MAX_INFLATED_BYTES)
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
        return _reported(answer.status, translated, headers, answer.reason)

    def _whole(self, answer: Answer, limit: int, inflated_limit: int) -> bytes:
        if not answer.read_all(limit):
            answer.discard()
            raise UpstreamUnreachable(f"{self.facts.provider} answered with more than {limit >> 20} MiB; "
                                      "too large to translate")
        return answer.decoded_body(inflated_limit)


def _reported(status: int, body: dict[str, Any], headers: list[tuple[str, str]], reason: str) -> Answer:
    """Return a whole translated answer carrying the usage its body reports."""
    answer = Answer.whole(status, dumps(body), headers + [_JSON], reason)
    answer.usage = UsageReport.of(body)
    return answer


def first_output(stream: Answer, transform: StreamTransform, first_chunk: bytes) -> bytes:
    """Return a translated stream's first bytes for the client, reading on until there are some (or it ended).

    Until the client has had a byte, an upstream that breaks off (or whose stream cannot be inflated) is a
    failed attempt that retries and fallbacks move on from (docs/security.md); after it, a break cuts the
    client's stream and a stream that cannot be inflated ends in an error event.
    """
    try:
        return transform.feed(first_chunk) or stream.next_chunk()
    except GatewayError:
        if stream.response is not None:
            stream.response.close()  # broken off or refused mid-body: the connection cannot be reused
        raise


class StreamTransform:
    """Turns a provider's stream into the client's, event by event, as the bytes arrive."""

    def __init__(self, parser: ChunkParser, writer: StreamWriter, provider: str, encoding: str | None,
                 source: str = "") -> None:
        self.parser = parser
        self.writer = writer
        self.provider = provider
        self.source = source
        self.broken = False
        self.backlog = False  # inflated input not translated yet (a compressed stream goes a step at a time)
        self.started = False  # the client has had bytes of this stream
        try:
            self.encoding = encoding_of(encoding)
        except UnsupportedEncoding:
            self.encoding = None  # br, zstd: not undone here, read as they are (and found unreadable)
        self.inflater = Inflater(self.encoding, MAX_ANSWER_BYTES) if self.encoding else None
        self._pieces: Iterator[bytes] = iter(())

    def result(self) -> Usage:
        """Return the usage the stream has told the client so far (all of it once the stream ended)."""
        return self.writer.report.result()

    def feed(self, data: bytes) -> bytes:
        """Return the client's bytes for these upstream bytes (b"" while an event is still incomplete)."""
        if self.broken or not (data or self.backlog):
            return b""
        try:
            out = self.writer.write(self.parser.feed(data)) if self.inflater is None else self._inflated(data)
            self.started = self.started or bool(out)
            return out
        except GatewayError:
            raise
        except UpstreamBroke as err:
            return self._broken_by(err)
        except Exception:  # noqa: BLE001 - a stream we cannot read must end in an error event, not a cut
            log.exception("could not translate the %s stream", self.provider)
            return self._break(openai_error(f"{self.provider} error: the stream could not be translated"))

    def finish(self) -> bytes:
        """Return what the end of the upstream stream completes, and the client's end of stream."""
        if self.broken:
            return b""
        tail = b""
        try:
            tail = self._flushed()
            if self.broken:
                return tail
            return tail + self.writer.write(self.parser.finish()) + self.writer.end()
        except GatewayError:
            raise
        except UpstreamBroke as err:
            return tail + self._broken_by(err)
        except Exception:  # noqa: BLE001
            log.exception("could not finish the %s stream", self.provider)
            return self._break(openai_error(f"{self.provider} error: the stream ended in a way that could not "
                                            "be translated"))

    def _broken_by(self, err: UpstreamBroke) -> bytes:
        """End the stream at a failure: the chunks completed before it, then the error event."""
        return self.writer.write(err.before) + self._break(err.error)

    def _break(self, error: dict[str, Any]) -> bytes:
        self.broken = True
        return self.writer.error(error)

    def _inflated(self, data: bytes) -> bytes:
        """Translate the next STREAM_STEP inflated bytes at most; what remains is the backlog for feed(b"")."""
        assert self.inflater is not None and self.encoding is not None
        if data:
            self._pieces = chain(self._pieces, self.inflater.feed(data))
        out: list[bytes] = []
        taken = 0
        self.backlog = False
        try:
            for piece in self._pieces:
                if self.inflater.exhausted:
                    return b"".join(out) + self._refuse(bomb_message(self.source, self.inflater.allowed))
                try:
                    out.append(self.writer.write(self.parser.feed(piece)))
                except UpstreamBroke as err:
                    return b"".join(out) + self._broken_by(err)
                taken += len(piece)
                if taken >= STREAM_STEP:
                    self.backlog = True
                    break
        except zlib.error:
            return b"".join(out) + self._refuse(undecodable_message(self.source, self.encoding))
        return b"".join(out)

    def _flushed(self) -> bytes:
        """Translate what the inflater still holds at the end of the stream (a few bytes at most)."""
        if self.inflater is None:
            return b""
        rest = self.inflater.flush()
        if self.inflater.exhausted:
            return self._refuse(bomb_message(self.source, self.inflater.allowed))
        return self.writer.write(self.parser.feed(rest)) if rest else b""

    def _refuse(self, message: str) -> bytes:
        """Fail a stream that does not inflate: a failed attempt before the client had a byte, an error event after."""
        if not self.started:
            raise UpstreamUnreachable(message)
        log.warning("%s stream cut: %s", self.provider, message)
        return self._break(openai_error(f"{self.provider} error: {message}"))


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
