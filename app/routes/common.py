"""What every gateway view shares: build the context, run the pipeline, relay the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, BinaryIO, cast
from urllib.parse import quote, unquote

from flask import Response, current_app, g, request

from app.call.answer import Answer, Relay
from app.call.context import RequestContext
from app.errors import BadRequest, GatewayError, PayloadTooLarge
from app.http import client_ip
from app.observe import CallEnd
from app.pipeline import Gateway
from app.pipeline.inbound import assign_trace_id
from app.server.worker import close_after_answer

_ENCODED_SEPARATOR = re.compile(r"%(25)*(2f|5c)", re.IGNORECASE)
DRAIN_CHUNK = 64 * 1024


def gateway() -> Gateway:
    """Return this app's Gateway."""
    return current_app.extensions["portico"]  # type: ignore[no-any-return]


def begin(route: str, endpoint: str | None = None, unified_format: str | None = None) -> RequestContext:
    """Start a gateway call: its context, trace id and path check; counted in flight until its answer ends."""
    environ = request.environ
    ctx = RequestContext(method=request.method, path=raw_path(environ), query=environ.get("QUERY_STRING", ""),
                         headers=cast(Mapping[str, str], request.headers), route=route, endpoint=endpoint,
                         unified_format=unified_format,
                         client_ip=client_ip.from_environ(environ, gateway().settings.trusted_proxies))
    g.ctx = ctx
    assign_trace_id(ctx)
    gateway().observer.started(ctx)
    check_path(ctx.path)
    return ctx


def serve_own(route: str) -> RequestContext:
    """Start a call the gateway answers itself (GET /v1/models): its key is checked; `answer_own` ends it."""
    ctx = begin(route)
    gateway().governance.identify(ctx)
    return ctx


def answer_own(response: Response, ctx: RequestContext) -> Response:
    """Send the gateway's own answer to a call begun with serve_own: recorded when sent, with the gateway's headers."""
    response.call_on_close(call_end(ctx, response.status_code))
    return with_gateway_headers(response, ctx)


def serve(route: str, endpoint: str | None = None, unified_format: str | None = None) -> Response:
    """Handle one gateway call on any route."""
    environ = request.environ
    ctx = begin(route, endpoint, unified_format)
    chunked = "chunked" in (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()
    declared = None if chunked else (request.content_length or 0)
    stream = cast(BinaryIO, environ["wsgi.input"] if declared is None else request.stream)
    outcome = gateway().run(ctx, stream, declared)
    assert outcome.answer is not None
    return relayed(outcome.answer, ctx)


def relayed(answer: Answer, ctx: RequestContext) -> Response:
    """Return the client response that streams the answer as it arrives."""
    gw = gateway()
    ctx.upstream_status = answer.status
    # The gateway's own headers join the list before the Response exists: setting them one by one on
    # werkzeug's Headers scans the list each time. An upstream's x-portkey-* headers never pass, nor its
    # X-Accel-* ones: nginx obeys those (X-Accel-Redirect serves one of its own locations; docs/observability.md).
    # A limited key's x-ratelimit-* are the gateway's own (docs/governance.md): the provider's would contradict them.
    own = ("x-portkey-", "x-accel-", "x-ratelimit-") if ctx.grant is not None and ctx.grant.headers else \
        ("x-portkey-", "x-accel-")
    headers = [(k, v) for k, v in answer.headers if not k.lower().startswith(own)]
    headers += gateway_headers(ctx)
    stream = streamed(answer, ctx)
    if stream:
        headers.append(("X-Accel-Buffering", "no"))
    status = f"{answer.status} {answer.reason}".strip()
    body = Relay(answer, ctx, on_close=call_end(ctx, answer.status), tap=gw.observer.tap(ctx, answer), stream=stream)
    # direct_passthrough hands Relay itself to gunicorn, so its close() runs when the body is done.
    response = Response(body, status=status, headers=headers, direct_passthrough=True)
    if not any(k.lower() == "content-type" for k, _ in headers):
        del response.headers["Content-Type"]
    return response


# Answers relayed as a stream: SSE, the AWS event stream (Bedrock), newline-delimited JSON (Ollama and others).
_STREAM_TYPES = frozenset({"text/event-stream", "application/vnd.amazon.eventstream", "application/x-ndjson"})


def streamed(answer: Answer, ctx: RequestContext) -> bool:
    """Tell whether an answer is a stream, which a reverse proxy must pass on unbuffered (docs/observability.md)."""
    media = (answer.header("content-type") or "").split(";", 1)[0].strip().lower()
    # Gemini's streamGenerateContent without alt=sse sends one JSON array, element by element.
    return media in _STREAM_TYPES or ":streamGenerateContent" in ctx.path


def error_response(err: GatewayError, ctx: RequestContext | None) -> Response:
    """Render a gateway error as its JSON body with the gateway's headers."""
    drain_refused_body(err)
    response = current_app.response_class(json.dumps(err.body()), status=err.status, mimetype="application/json")
    for name, value in err.headers.items():
        response.headers[name] = value
    if err.gateway_exception:
        response.headers["x-portkey-gateway-exception"] = "true"
    if ctx is None:
        return response
    ctx.error = err.message
    response.call_on_close(call_end(ctx, err.status))
    return with_gateway_headers(response, ctx)


def call_end(ctx: RequestContext, status: int) -> CallEnd:
    """Return what runs once the answer is over: record the call, then delete its spooled body.

    Every attempt, retry and fallback replays the same body, so it lives until the call ends; recording may
    still read it (the request's model), so it goes last.
    """
    record = gateway().observer.finished(ctx, status)

    def end(client_left: bool = False) -> None:
        try:
            record(client_left)
        finally:
            if ctx.body is not None:
                ctx.body.close()
    return end


def drain_refused_body(err: GatewayError) -> None:
    """Read and discard the body the client is still sending, so the refusal reaches it.

    A refusal sent while the body is still coming in is lost behind a proxy: the connection closes with the body
    unread, the kernel resets it, and nginx answers its own 502. So the rest of the body is read first, up to
    `[limits] max_body_bytes` and within the body deadline; a larger body (declared, or found while reading)
    is not read, and the answer closes the connection instead (docs/deploy.md, Early refusals). A body that
    was read to its end already costs one empty read.
    """
    limit = gateway().settings.max_body_bytes
    declared = request.content_length
    chunked = "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()
    if not chunked and not declared:
        return
    if isinstance(err, PayloadTooLarge) or (not chunked and declared is not None and declared > limit):
        close_after_answer()
        return
    drained = 0
    try:
        while drained <= limit:
            chunk = request.stream.read(DRAIN_CHUNK)
            if not chunk:
                return  # read to the end: the connection stays usable
            drained += len(chunk)
    except Exception:  # noqa: BLE001 - a body that breaks, or comes too slowly, is not read further
        pass
    close_after_answer()


def with_gateway_headers(response: Response, ctx: RequestContext) -> Response:
    """Add the gateway's response headers (docs/configs.md, Response headers) to a response the gateway wrote itself."""
    for name, value in gateway_headers(ctx):
        response.headers[name] = value
    return response


def gateway_headers(ctx: RequestContext) -> list[tuple[str, str]]:
    """Return the gateway's response headers for a call (docs/configs.md, Response headers)."""
    headers = [("x-portkey-trace-id", ctx.trace_id)] if ctx.trace_id else []
    if ctx.target is not None:
        headers += [("x-portkey-provider", ctx.target.provider.slug),
                    ("x-portkey-retry-attempt-count", str(ctx.retry_count)),
                    ("x-portkey-cache-status", ctx.cache_status)]
        if ctx.option_index:
            headers.append(("x-portkey-last-used-option-index", ctx.option_index))
    if ctx.grant is not None:
        headers += ctx.grant.headers
    return headers


def raw_path(environ: dict[str, Any]) -> str:
    """Return the request path as the client wrote it (percent-escapes intact), without the query."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = raw.split("?", 1)[0]
        if path.startswith("/"):
            return path
        if "://" in path:  # absolute-form request target
            return "/" + path.split("://", 1)[1].partition("/")[2]
    return quote(environ.get("PATH_INFO", "/"), safe="/:@!$&'()*+,;=-._~%")


def check_path(path: str) -> None:
    """Refuse a path that climbs out of its base (dot segments, encoded separators)."""
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("Invalid path: encoded slashes or backslashes are not allowed")
    decoded = path
    for _ in range(4):  # undo double and triple encoding too
        step = unquote(decoded)
        if step == decoded:
            break
        decoded = step
    if "\\" in decoded or any(seg in (".", "..") for seg in decoded.split("/")):
        raise BadRequest("Invalid path: '.' and '..' segments are not allowed")
