"""What happens around every call: usage from the answer, its cost, the access line, the log record, metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from app.call.answer import Answer
from app.call.context import RequestContext
from app.logs import access_line, write_access_line
from app.logstore import LogRecord, LogStore
from app.metrics import OTHER, GatewayMetrics
from app.redact import MASK, NO_SECRETS, Secrets, call_secrets, track_call
from app.server import inflight
from app.usage import Cost, PricingTable, Usage, UsageTap

log = logging.getLogger(__name__)
# nginx's code for a client that closed the connection before the answer ended; the gateway uses it for a
# client that left mid-answer and for a call cut at shutdown (docs/observability.md).
CLIENT_CLOSED_STATUS = 499
CLIENT_CLOSED = "client closed"


class CallEnd(Protocol):
    """Records a call when its answer is over; told when the client left before the end."""

    def __call__(self, client_left: bool = False) -> None: ...


class CallObserver:
    """Counts calls in and out, and records each one when its answer has been sent."""

    def __init__(self, pricing: PricingTable, log_store: LogStore | None, metrics: GatewayMetrics | None,
                 access_lines: bool = True) -> None:
        self.pricing = pricing
        self.access_lines = access_lines
        self.log_store = log_store
        self.metrics = metrics
        self._unpriced: set[str] = set()

    def started(self, ctx: RequestContext) -> None:
        """Count the call in flight, and let this thread's log lines know the call (to mask its secrets)."""
        track_call(ctx)
        if self.metrics is not None:
            self.metrics.call_started()
        inflight.begin(ctx, lambda: self._cut(ctx))  # a shutdown records it if it is cut

    def tap(self, ctx: RequestContext, answer: Answer) -> Callable[[bytes], None] | None:
        """Return the usage tap that reads a copy of the answer's chunks as they are relayed."""
        if ctx.cache_status == "HIT":
            return None  # a cached answer used no provider tokens and cost nothing

        # The request's model is only a fallback for answers that name none: read it at the end, if needed.
        tap = UsageTap(answer.header("content-type"), answer.header("content-encoding"))
        ctx.usage = tap
        return tap.feed

    def finished(self, ctx: RequestContext, status: int) -> CallEnd:
        """Return the callback that records the call once its body is done (or the client left)."""
        call = inflight.current(ctx) or inflight.begin(ctx, lambda: self._cut(ctx))

        def record(client_left: bool = False) -> None:
            inflight.end(call)
            if not call.ends():
                return  # the worker's shutdown cut the call and recorded it (docs/deploy.md, Shutdown)
            final = status
            if client_left:  # the upstream's status stays in upstream_status (docs/observability.md)
                ctx.error, final = CLIENT_CLOSED, CLIENT_CLOSED_STATUS
            try:
                self._record(ctx, final)
            except Exception:  # noqa: BLE001 - recording must never break the answer already sent
                log.exception("trace_id=%s could not record the call", ctx.trace_id)
        return record

    def _cut(self, ctx: RequestContext) -> None:
        """Record a call the worker cut at the end of its graceful period: status 499, error `shutdown`."""
        ctx.error = "shutdown"
        try:
            self._record(ctx, CLIENT_CLOSED_STATUS)
        except Exception:  # noqa: BLE001 - the worker is exiting; one unrecorded call must not stop the rest
            log.exception("trace_id=%s could not record the call cut at shutdown", ctx.trace_id)

    def _flag_unpriced(self, provider: str | None, model: str | None) -> None:
        """Warn once per process and model: every call is flagged in its access line and log record anyway."""
        name = f"{provider}/{model}"
        if name not in self._unpriced and len(self._unpriced) < 1000:
            self._unpriced.add(name)
            log.warning("no price for %s: its cost is left empty; add [pricing.%r] to the gateway file", name, name)

    def _record(self, ctx: RequestContext, status: int) -> None:
        now = time.perf_counter()
        usage: Usage = ctx.usage.result() if isinstance(ctx.usage, UsageTap) else Usage()
        if usage.model is None and not usage.is_empty():
            usage = replace(usage, model=request_model(ctx))
        if ctx.cache_status == "HIT":
            cost = Cost(0.0, None, False)
        elif usage.is_empty():
            cost = Cost(None, None, False)
        else:
            cost = self.pricing.cost(ctx.provider_slug or "", usage)
        if cost.unknown_model:
            self._flag_unpriced(ctx.provider_slug, usage.model)
        recorded = self.access_lines or self.log_store is not None
        secrets = call_secrets(ctx.headers, ctx.target) if recorded else NO_SECRETS
        if self.access_lines:
            write_access_line(access_line(ctx, status, usage_fields(usage, cost), secrets))
        if self.log_store is not None:
            self.log_store.record(log_record(ctx, status, usage, cost, now, secrets))
        if self.metrics is not None:
            upstream_s = now - ctx.upstream_sent if ctx.upstream_sent is not None else None
            self.metrics.call_finished(
                route=ctx.route, provider=ctx.provider_slug, status=status, latency_s=now - ctx.started,
                upstream_s=upstream_s, retries=ctx.retries_made, fell_back=ctx.fell_back,
                cache_status=ctx.cache_status, model=model_label(usage, cost), tokens=token_counts(usage),
                cost_usd=cost.usd)


def model_label(usage: Usage, cost: Cost) -> str | None:
    """Return the model's metrics label: its price-table name, or `other` (docs/security.md).

    The model is the client's choice: as a label it would add series without bound.
    """
    if usage.model is None:
        return None
    return cost.priced_as.partition("/")[2] if cost.priced_as else OTHER


def request_model(ctx: RequestContext) -> str | None:
    """Return the model the request named, if its body is JSON with a string model."""
    request = ctx.body_json()
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None


def token_counts(usage: Usage) -> dict[str, int]:
    """Return the token counts the answer reported, by kind."""
    kinds = {"input": usage.input_tokens, "output": usage.output_tokens,
             "cache_read": usage.cache_read_tokens, "cache_write": usage.cache_write_tokens}
    return {kind: count for kind, count in kinds.items() if count}


def usage_fields(usage: Usage, cost: Cost) -> dict[str, Any]:
    """Return the usage and cost fields of the access line (only those the answer reported)."""
    fields: dict[str, Any] = {}
    if usage.model:
        fields["model"] = usage.model
    fields.update({f"{kind}_tokens": count for kind, count in token_counts(usage).items()})
    if usage.search_units:
        fields["search_units"] = usage.search_units
    if cost.usd is not None:
        fields["cost_usd"] = cost.usd
    if cost.unknown_model:
        fields["unknown_price"] = True
    return fields


def log_record(ctx: RequestContext, status: int, usage: Usage, cost: Cost, now: float,
               secrets: Secrets = NO_SECRETS) -> LogRecord:
    """Return the request-log record of a call: facts only, never bodies or secrets (docs/security.md)."""
    return LogRecord(
        trace_id=secrets.mask(ctx.trace_id), ts=time.time(), key_name=ctx.key_name, provider=ctx.provider_slug,
        target_path=ctx.option_index, method=ctx.method, route=ctx.route, path=secrets.scrub(ctx.path),
        status=status,
        upstream_status=ctx.upstream_status, latency_ms=round((now - ctx.started) * 1000, 3),
        upstream_ms=round(ctx.upstream_ms, 3) if ctx.upstream_ms is not None else None, retries=ctx.retries_made,
        cache_status=ctx.cache_status, model=secrets.mask(usage.model) if usage.model else None,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, search_units=usage.search_units, cost_usd=cost.usd,
        unknown_price=cost.unknown_model, metadata=masked_metadata(ctx.metadata, secrets),
        error=secrets.scrub(ctx.error) if ctx.error else None, client_ip=ctx.client_ip)


def masked_metadata(metadata: Any, secrets: Secrets) -> dict[str, Any]:
    """Return the call's metadata tags; a tag quoting a credential of the call has it masked (rare: checked whole)."""
    if not isinstance(metadata, dict) or not metadata:
        return {}
    if not secrets:
        return metadata
    text = json.dumps(metadata, ensure_ascii=False, default=str)
    if secrets.mask(text) == text:
        return metadata
    return {secrets.mask(str(name)): _masked(value, secrets, 0) for name, value in metadata.items()}


def _masked(value: Any, secrets: Secrets, depth: int) -> Any:
    if isinstance(value, str):
        return secrets.mask(value)
    if depth >= 8:  # the header is parsed with no depth limit; a masked record need not keep deep nests
        return MASK
    if isinstance(value, dict):
        return {secrets.mask(str(k)): _masked(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, secrets, depth + 1) for v in value]
    return value
