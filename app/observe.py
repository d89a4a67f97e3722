"""What happens around every call: usage from the answer, its cost, the access line, the log record, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from app.logs import access_line, redact, write_access_line
from app.logstore import LogRecord, LogStore
from app.metrics import GatewayMetrics
from app.usage import Cost, PricingTable, Usage, UsageTap

if TYPE_CHECKING:  # the pipeline builds the observer; importing it here at run time would be circular
    from app.pipeline.answer import Answer
    from app.pipeline.context import RequestContext

log = logging.getLogger(__name__)


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
        """Count the call in flight."""
        if self.metrics is not None:
            self.metrics.call_started()

    def tap(self, ctx: RequestContext, answer: Answer) -> Callable[[bytes], None] | None:
        """Return the usage tap that reads a copy of the answer's chunks as they are relayed."""
        if ctx.cache_status == "HIT":
            return None  # a cached answer used no provider tokens and cost nothing

        # The request's model is only a fallback for answers that name none: read it at the end, if needed.
        tap = UsageTap(answer.header("content-type"), answer.header("content-encoding"))
        ctx.usage = tap
        return tap.feed

    def finished(self, ctx: RequestContext, status: int) -> Callable[[], None]:
        """Return the callback that records the call once its body is done (or the client left)."""
        def record() -> None:
            try:
                self._record(ctx, status)
            except Exception:  # noqa: BLE001 - recording must never break the answer already sent
                log.exception("trace_id=%s could not record the call", ctx.trace_id)
        return record

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
        if self.access_lines:
            write_access_line(access_line(ctx, status, usage_fields(usage, cost)))
        if self.log_store is not None:
            self.log_store.record(log_record(ctx, status, usage, cost, now))
        if self.metrics is not None:
            upstream_s = now - ctx.upstream_sent if ctx.upstream_sent is not None else None
            self.metrics.call_finished(
                route=ctx.route, provider=ctx.provider_slug, status=status, latency_s=now - ctx.started,
                upstream_s=upstream_s, retries=max(ctx.retry_count, 0), fell_back=ctx.fell_back,
                cache_status=ctx.cache_status, model=usage.model, tokens=token_counts(usage), cost_usd=cost.usd)


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


def log_record(ctx: RequestContext, status: int, usage: Usage, cost: Cost, now: float) -> LogRecord:
    """Return the request-log record of a call: facts only, never bodies or secrets."""
    return LogRecord(
        trace_id=ctx.trace_id, ts=time.time(), key_name=ctx.key_name, provider=ctx.provider_slug,
        target_path=ctx.option_index, method=ctx.method, route=ctx.route, path=ctx.path, status=status,
        upstream_status=ctx.upstream_status, latency_ms=round((now - ctx.started) * 1000, 3),
        upstream_ms=round(ctx.upstream_ms, 3) if ctx.upstream_ms is not None else None, retries=ctx.retry_count,
        cache_status=ctx.cache_status, model=usage.model, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, search_units=usage.search_units, cost_usd=cost.usd,
        unknown_price=cost.unknown_model, metadata=ctx.metadata if isinstance(ctx.metadata, dict) else {},
        error=redact(ctx.error) if ctx.error else None)
