"""What happens around every call: usage from the answer, its cost, and one CallRecord handed to every sink."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from app.call.answer import Answer
from app.call.context import RequestContext
from app.call.record import CallRecord, Sink
from app.logs import AccessLineSink
from app.logstore import LogStore
from app.logstore.sink import RequestLogSink
from app.metrics import GatewayMetrics, MetricsSink
from app.redact import call_secrets, track_call
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
    """Counts calls in and out, and hands each one's record to its sinks when its answer has been sent."""

    def __init__(self, pricing: PricingTable, log_store: LogStore | None, metrics: GatewayMetrics | None,
                 access_lines: bool = True) -> None:
        self.pricing = pricing
        self.metrics = metrics
        self.sinks: list[Sink] = []
        self._unpriced: set[str] = set()
        # In this order, as before there were sinks: the access line, the request log, the metrics.
        if access_lines:
            self.register(AccessLineSink())
        if log_store is not None:
            self.register(RequestLogSink(log_store))
        if metrics is not None:
            self.register(MetricsSink(metrics))

    def register(self, sink: Sink) -> None:
        """Hand every call recorded from now on to `sink` too, after the sinks registered before it."""
        self.sinks.append(sink)

    def started(self, ctx: RequestContext) -> None:
        """Count the call in flight, and let this thread's log lines know the call (to mask its secrets)."""
        track_call(ctx)
        if self.metrics is not None:
            self.metrics.call_started()
        inflight.begin(ctx, lambda: self._cut(ctx))  # a shutdown records it if it is cut

    def tap(self, ctx: RequestContext, answer: Answer) -> Callable[[bytes], None] | None:
        """Return the usage tap that reads a copy of the answer's chunks as they are relayed, if it needs one.

        A translated answer carries its usage as data (the translator's report, read at the end): only an
        answer relayed as the provider sent it (or rebuilt by hooks) has its bytes read.
        """
        if ctx.cache_status == "HIT":
            return None  # a cached answer used no provider tokens and cost nothing
        if answer.usage is not None:
            ctx.usage = answer.usage
            return None
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
        """Build the call's record once and hand it to every sink; one that fails does not stop the others."""
        now = time.perf_counter()
        usage, cost = self._usage_and_cost(ctx)
        if not self.sinks and ctx.grant is None:
            return
        record = CallRecord.of(ctx, status, usage, cost, call_secrets(ctx.headers, ctx.target), now)
        if ctx.grant is not None:
            # First: the key's slot, reservation and tokens count against its next calls (docs/governance.md).
            try:
                ctx.grant.finish(record)
            except Exception:  # noqa: BLE001 - the sinks still get the record
                log.exception("trace_id=%s could not count the call against its key", record.trace_id)
        for sink in self.sinks:
            try:
                sink.write(record)
            except Exception:  # noqa: BLE001 - one sink's failure must not cost the others their record
                log.exception("trace_id=%s could not record the call in %s", record.trace_id, type(sink).__name__)

    def _usage_and_cost(self, ctx: RequestContext) -> tuple[Usage, Cost]:
        """Return what the answer used (the request's model when the answer named none) and its cost."""
        usage = ctx.usage.result() if ctx.usage is not None else Usage()
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
        return usage, cost


def request_model(ctx: RequestContext) -> str | None:
    """Return the model the request named, if its body is JSON with a string model."""
    request = ctx.body_json()
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None
