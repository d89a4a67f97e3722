"""Answers: what an upstream, the cache or a hook answered, and the relay that streams one to the client."""

from __future__ import annotations

import http.client
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests
import urllib3

from app.call.context import RequestContext
from app.errors import UpstreamUnreachable
from app.http.failures import cause_of
from app.http.headers import response_headers
from app.redact import MAX_MASKED_BODY, Secrets, textual
from app.usage.inflate import InflatedTooLarge, UnsupportedEncoding, encoding_of, inflate
from app.usage.model import UsageSource

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
_NOT_REPLAYED = frozenset({"content-length", "content-encoding"})
# A whole body is inflated to at most this unless its reader allows more (docs/security.md): a
# compressed answer must not cost more memory than the bytes the gateway chose to read of it.
MAX_DECODED_BODY = 1 << 20


class BodyTransform(Protocol):
    """Rewrites a streamed body as it is read (a translated stream)."""

    broken: bool  # the transform ended the body early (an error event): the rest is not read
    backlog: bool  # the transform holds input it has not turned into output yet: feed(b"") goes on with it

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class StreamAborted(Exception):
    """The upstream broke off after the answer started; the client connection must be cut, not ended cleanly."""


@dataclass
class Answer:
    """A status, headers and a body: the rest of an upstream response still to read, or whole bytes."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    first_chunk: bytes = b""
    response: requests.Response | None = field(default=None, repr=False)
    transform: BodyTransform | None = field(default=None, repr=False)
    source: str = field(default="", repr=False)  # the upstream host that answered ("": a cached answer)
    usage: UsageSource | None = field(default=None, repr=False)  # a translator's report; None: the byte tap reads it
    _ended: bool = field(default=False, repr=False)

    @classmethod
    def from_response(cls, response: requests.Response, first_chunk: bytes = b"") -> Answer:
        """Return an answer that relays an upstream response, hop-by-hop headers left out."""
        return cls(response.status_code, response.reason or "", response_headers(response.raw.headers.items()),
                   first_chunk, response, source=urlsplit(response.url).hostname or "")

    @classmethod
    def whole(cls, status: int, body: bytes, headers: list[tuple[str, str]], reason: str = "",
              source: str = "") -> Answer:
        """Return an answer whose body is all here (cached, or rebuilt by hooks)."""
        kept = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return cls(status, reason, kept + [("Content-Length", str(len(body)))], body, source=source)

    def header(self, name: str) -> str | None:
        """Return the first header of that name (case-insensitive)."""
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def read_all(self, limit: int) -> bool:
        """Read the rest of the body into memory, up to limit bytes; return False (still streamable) when over."""
        if self.response is None:
            return True
        chunks = [self.first_chunk]
        size = len(self.first_chunk)
        while True:
            chunk = self.next_chunk()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                self.first_chunk = b"".join(chunks)  # relayed first, then the rest as it comes
                return False
        if self.response is not None:
            self.response.raw.release_conn()
        self.response = None
        self.first_chunk = b"".join(chunks)
        return True

    def next_chunk(self) -> bytes:
        """Read the next piece of the body after the first chunk, transformed if it is; b"" at the end."""
        assert self.response is not None
        if self.transform is None:
            return read_chunk(self.response)
        while not self._ended:
            if self.transform.broken:
                self._ended = True
                self.response.raw.close()  # the rest is not read: the connection cannot be reused
                break
            # A compressed stream is inflated a bounded step at a time: what is held goes out before more is read.
            backlog = self.transform.backlog
            raw = b"" if backlog else read_chunk(self.response)
            if not raw and not backlog:
                self._ended = True
                return self.transform.finish()
            out = self.transform.feed(raw)
            if out:
                return out
        return b""

    def decoded_body(self, limit: int = MAX_DECODED_BODY) -> bytes:
        """Return a whole body with its Content-Encoding (gzip, deflate) undone, inflated to at most limit bytes.

        A body that inflates further, or more than 100 times its size, is refused as a compression bomb, and
        one that does not inflate is refused too: both as a 502 naming the host (docs/security.md).
        """
        try:
            encoding = encoding_of(self.header("content-encoding"))
        except UnsupportedEncoding:
            return self.first_chunk  # br, zstd: not decoded by the gateway, read as they are
        if encoding is None:
            return self.first_chunk
        try:
            return inflate(self.first_chunk, encoding, limit)
        except InflatedTooLarge as err:
            raise UpstreamUnreachable(bomb_message(self.source, err.limit)) from None
        except zlib.error:
            raise UpstreamUnreachable(undecodable_message(self.source, encoding)) from None

    def replay_headers(self) -> tuple[tuple[str, str], ...]:
        """Return the headers worth keeping with a stored copy: the content type and encoding."""
        return tuple((k, v) for k, v in self.headers if k.lower() in ("content-type", "content-encoding"))

    def with_body(self, status: int, body: bytes) -> Answer:
        """Return a whole answer with a new (decoded) body and status, other headers kept."""
        headers = [(k, v) for k, v in self.headers if k.lower() not in _NOT_REPLAYED]
        return Answer.whole(status, body, headers, source=self.source)

    def discard(self, drain_limit: int = 64 * 1024) -> None:
        """Let go of an answer that will not be relayed; keep the connection when its rest is small."""
        response = self.response
        if response is None:
            return
        length = response.headers.get("content-length", "")
        try:
            if length.isdigit() and int(length) <= drain_limit:
                response.raw.drain_conn()
                response.raw.release_conn()
            else:
                response.close()
        except Exception:  # noqa: BLE001 - a broken connection being dropped needs no further care
            response.close()


def bomb_message(source: str, limit: int) -> str:
    """Return the error of an answer that inflates past what the gateway reads of it."""
    return f"{_which(source)} decompresses beyond {limit} bytes; refused as a compression bomb"


def undecodable_message(source: str, encoding: str) -> str:
    """Return the error of an answer that does not inflate as its Content-Encoding says."""
    return f"{_which(source)} does not decompress as its Content-Encoding ({encoding}) says"


def _which(source: str) -> str:
    return f"The answer from upstream host {source}" if source else "A cached answer"


def read_chunk(response: requests.Response) -> bytes:
    """Read what the upstream has sent so far (up to CHUNK bytes, without waiting to fill it); b"" at the end."""
    raw = response.raw
    try:
        # A chunked body's events are read from http.client directly: urllib3's read1 adds several calls and
        # a context manager per event and nothing a chunked, undecoded body needs (docs/decisions.md). The
        # end of the body, and any other body, still goes through urllib3, which closes and counts it.
        fp = raw._fp if type(raw) is urllib3.HTTPResponse else None
        if type(fp) is http.client.HTTPResponse and fp.chunked and not raw._has_decoded_content:
            try:
                data = fp.read1(CHUNK)
            except (http.client.HTTPException, OSError) as err:
                raise _as_urllib3_error(err) from err
            if data:
                return data
        return raw.read1(CHUNK, decode_content=False)
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
        raise broke_off(response, err) from err


def broke_off(response: requests.Response, err: BaseException) -> UpstreamUnreachable:
    """Return the error of an upstream that broke off its answer after it started."""
    host = urlsplit(response.url).hostname or "the upstream"
    return UpstreamUnreachable(f"Upstream host {host} broke off its answer: {cause_of(err)}")


def _as_urllib3_error(err: BaseException) -> BaseException:
    """Return the error urllib3 would have raised for a failed read, so the message stays the same."""
    if isinstance(err, TimeoutError):
        return err
    return urllib3.exceptions.ProtocolError(f"Connection broken: {err!r}", err)


class Relay:
    """An answer's body as a WSGI iterable: chunks as they arrive, compressed bytes untouched.

    gunicorn calls close() when the body is done or the client left; that releases (or drops) the
    upstream connection and runs `on_close` (the access line), telling it whether the client left
    before the end (docs/observability.md).
    """

    def __init__(self, answer: Answer, ctx: RequestContext, on_close: Callable[[bool], None] | None = None,
                 tap: Callable[[bytes], None] | None = None, stream: bool = False) -> None:
        self.answer = answer
        self.response = answer.response
        self.pending = answer.first_chunk
        self.ctx = ctx
        self.on_close = on_close
        self.tap = tap
        self.finished = answer.response is None and not answer.first_chunk
        self.started = False  # the server asked for the body (a HEAD, 204 or 304 answer never does)
        self.broke = False  # the body ended in an error of its own (the upstream broke off), not the client's
        self.closed = False
        # A stream a PorticoWorker may relay on its event loop rather than in a thread (docs/decisions.md, Streams).
        self.stream = stream and answer.response is not None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.started = True
        try:
            return self._next_chunk()
        except StopIteration:
            raise
        except Exception:
            self.broke = True
            raise

    @property
    def client_left(self) -> bool:
        """Tell whether the client went away mid-answer: the body was started, not ended, and did not break."""
        return self.started and not self.finished and not self.broke

    def _next_chunk(self) -> bytes:
        """Return the next piece of the body for the client; StopIteration at its end."""
        if self.pending:
            chunk, self.pending = self.pending, b""
        elif self.response is None:
            self.finished = True
            raise StopIteration
        else:
            try:
                chunk = self.answer.next_chunk()
            except UpstreamUnreachable as err:
                raise self.aborted(err) from None
            if not chunk:
                self.finished = True
                raise StopIteration
        return self.deliver(chunk)

    def deliver(self, chunk: bytes) -> bytes:
        """Count a piece of the body on its way to the client and tap its usage."""
        self.ctx.bytes_out += len(chunk)
        if self.tap is not None:
            self.tap(chunk)  # usage extraction reads a copy; the client gets the chunk unchanged
        return chunk

    def aborted(self, err: UpstreamUnreachable) -> StreamAborted:
        """Note an upstream that broke off mid-answer; return the error that cuts the client's connection."""
        self.broke = True
        self.ctx.error = err.message
        log.warning("trace_id=%s %s after %d bytes", self.ctx.trace_id, self.ctx.error, self.ctx.bytes_out)
        return StreamAborted(self.ctx.error)

    def close(self) -> None:
        """Release the upstream connection (drop it if the body was not read to the end)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.response is not None:
                raw = self.response.raw
                if not self.finished:
                    raw.close()  # an unread rest would poison a pooled connection
                raw.release_conn()
        finally:
            if self.on_close is not None:
                self.on_close(self.client_left)


def masked_error(answer: Answer, secrets: Secrets, any_type: bool = False) -> Answer:
    """Return an upstream error answer with the call's credentials masked in its body (docs/security.md).

    Only error answers (status >= 400) of a readable type and at most MAX_MASKED_BODY bytes are read;
    an answer that quotes no credential is returned unchanged, byte for byte, encoding and all.
    """
    if answer.status < 400 or not secrets or not (any_type or textual(answer.header("content-type"))):
        return answer
    try:
        complete = answer.read_all(MAX_MASKED_BODY)
    except Exception:
        if answer.response is not None:
            answer.response.close()  # broken off mid-body: the connection cannot be reused
        raise
    if not complete:
        return answer  # too large to search: relayed as it comes
    try:
        body = answer.decoded_body()
    except Exception:  # noqa: BLE001 - a body that does not decode cannot be read by the client either
        return answer
    masked = secrets.mask_bytes(body)
    if masked == body:
        return answer
    return answer.with_body(answer.status, masked)
