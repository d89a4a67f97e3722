"""The upstream call: URL, headers, send, and the one place transport errors are translated."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict
from requests.utils import requote_uri

from app.call.answer import Answer, masked_error, read_chunk
from app.call.context import PROXY, RequestContext, ResolvedTarget
from app.call.native import NativeRequest
from app.errors import BadRequest, InvalidCustomHost, UpstreamTimeout, UpstreamUnreachable
from app.http.body import Body
from app.http.deadline import Deadline
from app.http.failures import cause_of, caused_by
from app.http.headers import forwarded_headers, proxy_headers
from app.http.hosts import HostPolicy, PinnedHost, UnresolvedHost
from app.jsonwire import compact_bytes
from app.redact import call_secrets
from app.settings import Settings

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
_VERSION_SEGMENT = re.compile(r"/v\d+$")  # a base URL's trailing API version: /v1


@dataclass(frozen=True)
class UpstreamRequest:
    """One leaf's request to its provider, built once: the cache key reads it and every attempt sends it."""

    method: str
    url: str
    headers: Mapping[str, str]  # all but the provider's auth, which each attempt applies last
    body: Body | None
    pinned: PinnedHost | None  # the checked address to connect to (None: by name, or through a proxy)
    client_sent_length: bool  # the client sent a Content-Length (an empty body is then sent as one)
    translated: bool  # the body is in the provider's own format, built by the gateway

    def prepared(self) -> requests.PreparedRequest:
        """Return a new prepared request for one attempt (auth and pinning change it; a spooled body rewinds)."""
        return prepare(self.method, self.url, dict(self.headers), self.body, self.client_sent_length)


def build(ctx: RequestContext, target: ResolvedTarget, body: Body | None, forward: tuple[str, ...],
          native: NativeRequest | None, session: requests.Session, policy: HostPolicy,
          settings: Settings) -> UpstreamRequest:
    """Return a leaf's upstream request: the checked URL, its pinned address, the headers and the body."""
    url, pinned = upstream_url(ctx, target, policy, native)
    if pinned is not None and not target.custom_host and _through_proxy(session, url):
        pinned = None  # the proxy makes the connection to the provider's own host: there is no socket to pin
    headers = upstream_headers(ctx, target, forward, settings, native)
    return UpstreamRequest(ctx.method, url, headers, body, pinned, "content-length" in ctx.headers,
                           native is not None)


def upstream_url(ctx: RequestContext, target: ResolvedTarget, policy: HostPolicy,
                 native: NativeRequest | None = None) -> tuple[str, PinnedHost | None]:
    """Return the upstream URL of this call and the checked host to connect to (None: connect by name)."""
    if target.custom_host:
        base = policy.check(target.custom_host).base_url
    else:
        base = target.provider.base_for(target.options)
    extra: dict[str, str] = {}
    query = ctx.query
    if ctx.route == PROXY:
        path = ctx.rest
    elif native is not None:
        # A translated call goes to the native path, with the native query only.
        path, _, query = native.path.partition("?")
        path, extra = target.provider.unified_path(path, target.options)
        if native.from_root:
            # The native path names its own API version (Cohere's /v2/chat): it replaces the base's last version
            # segment, and a custom host's path prefix stays, as on the proxy (docs/providers.md).
            base = _VERSION_SEGMENT.sub("", base.rstrip("/"))
    else:
        path, extra = target.provider.unified_path(ctx.rest, target.options)
    query = "&".join(q for q in (query, urlencode(extra)) if q)
    url = base.rstrip("/") + path + ("?" + query if query else "")
    return url, checked_host(url, policy, provider_host=not target.custom_host)


def checked_host(url: str, policy: HostPolicy, provider_host: bool) -> PinnedHost | None:
    """Run where the final URL goes through the custom-host policy, whatever built it (docs/security.md).

    Only the origin (scheme, host, port) is checked, so the policy's memo of accepted hosts stays hot.
    """
    parts = urlsplit(url)
    try:
        return policy.check(f"{parts.scheme}://{parts.netloc}")
    except UnresolvedHost:
        if not provider_host:
            raise
        # A provider's own host with no address here: connect by name as before, which fails the same way
        # (502), or lets a proxy that the gateway's own lookups cannot see resolve it.
        return None
    except InvalidCustomHost as refused:
        if not provider_host:
            raise
        reason = (refused.errors or [refused.message])[0].removeprefix("custom host ")
        raise BadRequest("Invalid upstream host", errors=[
            f"upstream host {reason}; if the gateway reaches this provider over a private network, "
            "add the host to custom_hosts.allow"]) from None


def upstream_headers(ctx: RequestContext, target: ResolvedTarget, forward: tuple[str, ...],
                     settings: Settings, native: NativeRequest | None = None) -> dict[str, str]:
    """Return the headers sent upstream: the route's policy, the forward list, then the provider's own."""
    if ctx.route == PROXY:
        headers = proxy_headers(ctx.header_items, settings.proxy_drop)
    elif native is not None:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **native.headers}
    else:
        headers = {}
        if ctx.headers.get("content-type"):
            headers["Content-Type"] = ctx.headers["content-type"]
    if ctx.key_headers:  # a gateway key never leaves the gateway, even when the forward list names its header
        forward = tuple(name for name in forward if name not in ctx.key_headers)
    headers.update(forwarded_headers(ctx.headers, forward))
    headers.update(target.provider.sent_headers(target.options, ctx.headers))
    return headers


def send(ctx: RequestContext, target: ResolvedTarget, request: UpstreamRequest, timeout_ms: int | None,
         session: requests.Session, settings: Settings) -> Answer:
    """Make one attempt; a 2xx answer must deliver its first chunk too (so a dead stream can still fall back)."""
    prepared = request.prepared()
    # Authenticated last, once URL, headers and body are final: SigV4 signs exactly what is sent.
    target.provider.auth_for(target.credential, target.options)(prepared)
    sent = time.perf_counter()
    if ctx.upstream_sent is None:
        ctx.upstream_sent = sent
    try:
        response = dispatch(session, prepared, request.pinned, _timeouts(timeout_ms, settings), timeout_ms)
    finally:
        ctx.upstream_ms = (time.perf_counter() - sent) * 1000
    if timeout_ms is not None:
        # The request timeout covers the wait for headers; a started answer is not cut by it.
        _set_read_timeout(response, settings.read_timeout_s)
    if not 200 <= response.status_code < 300:
        # An error may quote the credential it was sent: masked before anyone reads it (docs/security.md).
        return masked_error(Answer.from_response(response), call_secrets(ctx.headers, target), request.translated)
    try:
        return Answer.from_response(response, read_chunk(response))
    except UpstreamUnreachable:
        response.close()
        raise


def dispatch(session: requests.Session, prepared: requests.PreparedRequest, pinned: PinnedHost | None,
             timeout: tuple[float, float], timeout_ms: int | None, wait: Deadline | None = None) -> requests.Response:
    """Send a prepared request to the checked address; the one place transport failures are translated.

    Connect, sending and the wait for the response headers share one deadline of timeout[1] seconds: a host
    that trickles bytes cannot stretch it (docs/security.md). A caller that reads the answer within the same
    deadline opens it itself and passes it as `wait`, and must check `wait.expired` after reading.
    """
    url = prepared.url or ""
    if pinned is not None and pinned.address is not None and pinned.address != pinned.host:
        prepared.pinned_address = pinned.address  # type: ignore[attr-defined]
        prepared.headers["Host"] = _host_header(pinned)
    proxies = session.merge_environment_settings(url, {}, None, None, None)["proxies"] if session.trust_env else None
    if wait is not None:
        return _send_within(session, prepared, timeout, timeout_ms, proxies, wait)
    with Deadline(timeout[1]) as own:
        response = _send_within(session, prepared, timeout, timeout_ms, proxies, own)
    if own.expired:
        # The deadline passed as the headers came in: what was read may be cut short, so it is not used.
        response.close()
        raise _timed_out(url, timeout_ms)
    return response


def _send_within(session: requests.Session, prepared: requests.PreparedRequest, timeout: tuple[float, float],
                 timeout_ms: int | None, proxies: Any, wait: Deadline) -> requests.Response:
    url = prepared.url or ""
    try:
        # The adapter, not Session.send: the session's redirect handling would read (and decode) a 3xx body.
        return session.get_adapter(url).send(prepared, stream=True, timeout=timeout, proxies=proxies)
    except requests.exceptions.RequestException as err:
        # Past the deadline the watchdog shut the socket: whatever broke, the cause is the deadline.
        raise (_timed_out(url, timeout_ms) if wait.expired else _translate(err, url, timeout_ms)) from err


class HookHTTP:
    """The HTTP client of guardrail checks (webhook, JWKS): pooled session, custom-host policy, and a timeout
    that is a deadline for the whole call, connect to the last byte of the answer (docs/security.md)."""

    MAX_ANSWER_BYTES = 1024 * 1024

    def __init__(self, sessions: Callable[[], requests.Session], policy: HostPolicy) -> None:
        self.sessions = sessions
        self.policy = policy

    def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                  timeout_s: float) -> tuple[int, Any]:
        """POST JSON and return (status, parsed JSON or None)."""
        data = Body(compact_bytes(body))
        return self._call("POST", url, {"Content-Type": "application/json", **headers}, data, timeout_s)

    def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        """GET and return (status, parsed JSON or None)."""
        return self._call("GET", url, {"Accept": "application/json"}, None, timeout_s)

    def _call(self, method: str, url: str, headers: Mapping[str, str], body: Body | None,
              timeout_s: float) -> tuple[int, Any]:
        parts = urlsplit(url)
        # The policy checks where the call goes (scheme, host, port); path and query are the hook's own.
        pinned = self.policy.check(f"{parts.scheme}://{parts.netloc}")
        rest = parts.path + ("?" + parts.query if parts.query else "")
        prepared = prepare(method, pinned.base_url + rest, dict(headers), body, False)
        timeout_ms = int(timeout_s * 1000)
        # One deadline for the whole call, the answer's body included (docs/security.md).
        with Deadline(timeout_s) as wait:
            try:
                response = dispatch(self.sessions(), prepared, pinned, (timeout_s, timeout_s), timeout_ms, wait)
                try:
                    raw = response.raw.read(self.MAX_ANSWER_BYTES + 1, decode_content=True)
                finally:
                    response.close()
            except (OSError, urllib3.exceptions.HTTPError) as err:
                if wait.expired:
                    raise UpstreamTimeout(timeout_ms) from err
                raise
        if wait.expired:  # the body came as the deadline passed: it may be cut short
            raise UpstreamTimeout(timeout_ms)
        if len(raw) > self.MAX_ANSWER_BYTES:
            return response.status_code, None
        try:
            return response.status_code, json.loads(raw) if raw else None
        except ValueError:
            return response.status_code, None


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


def _through_proxy(session: requests.Session, url: str) -> bool:
    """Return True when the session sends this URL through an HTTP(S) proxy ([upstream] trust_env)."""
    if not session.trust_env:
        return False
    proxies = session.merge_environment_settings(url, {}, None, None, None)["proxies"]
    return bool(requests.utils.select_proxy(url, proxies))


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


def _timed_out(url: str, timeout_ms: int | None) -> Exception:
    """Return the error of a wait cut by its deadline: 408 for the request's own timeout, else 502."""
    if timeout_ms is not None:
        return UpstreamTimeout(timeout_ms)
    host = urlsplit(url).hostname or "the upstream"
    return UpstreamUnreachable(f"Could not get an answer from upstream host {host}: timed out")


def _translate(err: requests.exceptions.RequestException, url: str,
               timeout_ms: int | None) -> Exception:
    """Turn a transport failure into the gateway error the client sees (408 or 502)."""
    host = urlsplit(url).hostname or "the upstream"
    timed_out = isinstance(err, (requests.exceptions.Timeout,)) or caused_by(err, socket.timeout, TimeoutError)
    if timed_out and timeout_ms is not None:
        return UpstreamTimeout(timeout_ms)
    return UpstreamUnreachable(f"Could not get an answer from upstream host {host}: {cause_of(err)}")
