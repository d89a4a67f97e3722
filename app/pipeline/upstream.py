"""The upstream call: URL, headers, send, and the one place transport errors are translated."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri

from app.errors import UpstreamTimeout, UpstreamUnreachable
from app.http.body import Body
from app.http.headers import forwarded_headers, proxy_headers
from app.http.hosts import HostPolicy, PinnedHost
from app.pipeline.context import PROXY, RequestContext, ResolvedTarget
from app.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class StreamAborted(Exception):
    """The upstream broke off after the answer started; the client connection must be cut, not ended cleanly."""


def upstream_url(ctx: RequestContext, target: ResolvedTarget, policy: HostPolicy) -> tuple[str, PinnedHost | None]:
    """Return the upstream URL of this call and the checked custom host, if one is used."""
    pinned = None
    if target.custom_host:
        pinned = policy.check(target.custom_host)
        base = pinned.base_url
    else:
        base = target.provider.base_for(target.options)
    extra: dict[str, str] = {}
    if ctx.route == PROXY:
        path = ctx.rest
    else:
        path, extra = target.provider.unified_path(ctx.rest, target.options)
    query = "&".join(q for q in (ctx.query, urlencode(extra)) if q)
    return base.rstrip("/") + path + ("?" + query if query else ""), pinned


def upstream_headers(ctx: RequestContext, target: ResolvedTarget, forward: tuple[str, ...],
                     settings: Settings) -> dict[str, str]:
    """Return the headers sent upstream: the route's policy, the forward list, then the provider's auth."""
    if ctx.route == PROXY:
        headers = proxy_headers(ctx.header_items, frozenset(settings.ignore_headers))
    else:
        headers = {}
        if ctx.headers.get("content-type"):
            headers["Content-Type"] = ctx.headers["content-type"]
    headers.update(forwarded_headers(ctx.headers, forward))
    headers.update(target.provider.auth_headers(target.credential, target.options, ctx.headers))
    return headers


@dataclass
class Answer:
    """An upstream response with its body unread, but for the first chunk of a 2xx answer."""

    response: requests.Response
    first_chunk: bytes = b""


def send(ctx: RequestContext, target: ResolvedTarget, body: Body | None, timeout_ms: int | None,
         forward: tuple[str, ...], session: requests.Session, policy: HostPolicy, settings: Settings) -> Answer:
    """Make one attempt; a 2xx answer must deliver its first chunk too (so a dead stream can still fall back)."""
    url, pinned = upstream_url(ctx, target, policy)
    ctx.upstream_url = url
    headers = upstream_headers(ctx, target, forward, settings)
    prepared = prepare(ctx.method, url, headers, body, "content-length" in ctx.headers)
    if pinned is not None and pinned.address is not None and pinned.address != pinned.host:
        prepared.pinned_address = pinned.address  # type: ignore[attr-defined]
        prepared.headers["Host"] = _host_header(pinned)
    timeout = _timeouts(timeout_ms, settings)
    proxies = session.merge_environment_settings(url, {}, None, None, None)["proxies"] if session.trust_env else None
    sent = time.perf_counter()
    try:
        # The adapter, not Session.send: the session's redirect handling would read (and decode) a 3xx body.
        response = session.get_adapter(url).send(prepared, stream=True, timeout=timeout,
                                                 proxies=proxies)
    except requests.exceptions.RequestException as err:
        raise _translate(err, url, timeout_ms) from err
    finally:
        ctx.upstream_ms = (time.perf_counter() - sent) * 1000
    if timeout_ms is not None:
        # The request timeout covers the wait for headers; a started answer is not cut by it.
        _set_read_timeout(response, settings.read_timeout_s)
    if not 200 <= response.status_code < 300:
        return Answer(response)
    try:
        return Answer(response, read_chunk(response))
    except UpstreamUnreachable:
        response.close()
        raise


def prepare(method: str, url: str, headers: dict[str, str], body: Body | None,
            client_sent_length: bool) -> requests.PreparedRequest:
    """Build the upstream request directly: the URL and headers are already checked, so requests'
    general-purpose preparation (URL re-parsing, IDNA, cookies, auth, params) is pure cost here."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = requote_uri(url)
    prepared.headers = CaseInsensitiveDict(headers)
    payload = body.payload() if body is not None else None
    prepared.body = payload  # type: ignore[assignment]  # a file streams, as requests does for data=file
    prepared.hooks = {"response": []}
    if payload is not None and body is not None:
        prepared.headers["Content-Length"] = str(body.size)
    elif client_sent_length:
        prepared.headers["Content-Length"] = "0"  # the client sent an empty body; a bodiless GET stays bodiless
    return prepared


def read_chunk(response: requests.Response) -> bytes:
    """Read what the upstream has sent so far (up to CHUNK bytes, without waiting to fill it); b"" at the end."""
    try:
        return response.raw.read1(CHUNK, decode_content=False)
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
        host = urlsplit(response.url).hostname or "the upstream"
        raise UpstreamUnreachable(f"Upstream host {host} broke off its answer: {cause_of(err)}") from err


class Relay:
    """The upstream body as a WSGI iterable: chunks as they arrive, compressed bytes untouched.

    gunicorn calls close() when the body is done or the client left; that releases (or drops) the
    upstream connection and runs the on-close callbacks (the access line).
    """

    def __init__(self, answer: Answer, ctx: RequestContext, on_close: Callable[[], None] | None = None) -> None:
        self.response = answer.response
        self.pending = answer.first_chunk
        self.ctx = ctx
        self.on_close = on_close
        self.finished = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.pending:
            chunk, self.pending = self.pending, b""
            self.ctx.bytes_out += len(chunk)
            return chunk
        try:
            chunk = read_chunk(self.response)
        except UpstreamUnreachable as err:
            self.ctx.error = err.message
            log.warning("trace_id=%s %s after %d bytes", self.ctx.trace_id, self.ctx.error, self.ctx.bytes_out)
            raise StreamAborted(self.ctx.error) from None
        if not chunk:
            self.finished = True
            raise StopIteration
        self.ctx.bytes_out += len(chunk)
        return chunk

    def close(self) -> None:
        """Release the upstream connection (drop it if the body was not read to the end)."""
        if self.closed:
            return
        self.closed = True
        raw = self.response.raw
        try:
            if not self.finished:
                raw.close()  # an unread rest would poison a pooled connection
            raw.release_conn()
        finally:
            if self.on_close is not None:
                self.on_close()


def _timeouts(timeout_ms: int | None, settings: Settings) -> tuple[float, float]:
    if timeout_ms is not None:
        seconds = timeout_ms / 1000
        return (seconds, seconds)
    return (settings.connect_timeout_s, settings.read_timeout_s)


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _host_header(pinned: PinnedHost) -> str:
    default = 443 if pinned.scheme == "https" else 80
    return pinned.host if pinned.port == default else f"{pinned.host}:{pinned.port}"


def _translate(err: requests.exceptions.RequestException, url: str,
               timeout_ms: int | None) -> Exception:
    """Turn a transport failure into the gateway error the client sees (408 or 502)."""
    host = urlsplit(url).hostname or "the upstream"
    timed_out = isinstance(err, (requests.exceptions.Timeout,)) or _has(err, socket.timeout, TimeoutError)
    if timed_out and timeout_ms is not None:
        return UpstreamTimeout(timeout_ms)
    return UpstreamUnreachable(f"Could not get an answer from upstream host {host}: {cause_of(err)}")


def cause_of(err: BaseException) -> str:
    """Name the root cause of a transport failure in a few words, without URLs or secrets."""
    if _has(err, ConnectionRefusedError):
        return "connection refused"
    if _has(err, ConnectionResetError) or "reset" in str(err).lower():
        return "connection reset by peer"
    if _has(err, socket.gaierror) or "resolve" in str(err).lower():
        return "the host name does not resolve"
    if _has(err, ssl.SSLError):
        return "TLS handshake failed"
    if _has(err, socket.timeout, TimeoutError) or isinstance(err, requests.exceptions.Timeout):
        return "timed out"
    if _has(err, http.client.BadStatusLine, http.client.LineTooLong) or "BadStatusLine" in repr(err):
        return "the answer was not valid HTTP"
    if _has(err, http.client.RemoteDisconnected, http.client.IncompleteRead) \
            or isinstance(err, urllib3.exceptions.ProtocolError):
        return "the connection closed before a complete answer"
    return type(err).__name__


def _has(err: BaseException, *kinds: type[BaseException]) -> bool:
    """Return True when the error, or anything in its cause chain or args, is one of the kinds."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None),
                    *[a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return False
