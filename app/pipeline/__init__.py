"""The handler chain every gateway call runs through, in one ordered list."""

from __future__ import annotations

import os
from typing import BinaryIO

from app import redact
from app.cache import ResponseCache, build_cache, cache_key
from app.call.answer import Answer
from app.call.context import RequestContext, ResolvedTarget
from app.call.native import NativeRequest
from app.governance.gate import Governance
from app.governance.stores import open_store
from app.http.body import Body
from app.http.hosts import HostPolicy
from app.http.sessions import SessionHolder
from app.logs import access_lines
from app.logstore import LogStore
from app.metrics import get_metrics
from app.observe import CallObserver
from app.pipeline import inbound, resolve, upstream
from app.pipeline.leaf import LeafExtras, Outcome
from app.pipeline.routing import Router
from app.pipeline.upstream import UpstreamRequest
from app.settings import Settings
from app.usage import PricingTable


def shared_cache_path(settings: Settings) -> str | None:
    """Return the host-wide cache file: in the run directory the workers of one master share (docs/cache.md)."""
    if settings.cache_backend != "memory" or settings.run_dir is None:
        return None  # a process of its own (tests, `flask run`): its memory is the whole host's cache
    return os.path.join(settings.run_dir, "cache.sqlite")


class Gateway:
    """The per-process gateway: settings, custom-host policy, upstream sessions, cache and the stages."""

    def __init__(self, settings: Settings, cache: ResponseCache | None = None) -> None:
        self.settings = settings
        self.policy = HostPolicy(settings.custom_hosts_allow)
        self.sessions = SessionHolder(pool_size=max(settings.threads, 10), trust_env=settings.trust_env)
        if cache is None:
            cache = build_cache(settings.cache_backend, settings.cache_max_bytes, settings.cache_max_entry_bytes,
                                shared_path=shared_cache_path(settings))
        self.cache = cache
        pricing = PricingTable.default().merged(PricingTable.parse_overrides(settings.pricing))
        metrics = get_metrics() if settings.metrics_enabled else None
        # An unusable log file never stops the worker: the store drops and counts records (docs/security.md).
        self.log_store = None if not settings.logs_path else LogStore(
            settings.logs_path, settings.logs_retention_days, on_drop=metrics.log_records_dropped if metrics else None)
        self.observer = CallObserver(pricing, self.log_store, metrics, settings.access_log)
        self.governance = Governance(settings.keys, pricing, open_store(settings.state_backend, settings.state_path))
        redact.hold(resolve.held_secrets(settings))  # log lines never show a credential of the gateway file
        self.extras = LeafExtras(cache=self.cache, cache_key=self.cache_key,
                                 hooks_http=upstream.HookHTTP(self.sessions.get, self.policy),
                                 check_target=self.governance.check_target)

    def close(self) -> None:
        """Flush and stop what runs in the background (the request-log writer, the cache client)."""
        access_lines.flush()
        if self.observer.metrics is not None:
            self.observer.metrics.flush()
        if self.log_store is not None:
            self.log_store.close()
        self.cache.close()
        self.governance.close()

    def run(self, ctx: RequestContext, stream: BinaryIO, declared_length: int | None) -> Outcome:
        """Run the stages and the config's routing; return the answering target's outcome (an answer to relay)."""
        # Order matters: authenticate before anything costly; spool the body before routing reads it. A call
        # with several problems hears of the one to fix first: the key, then provider and config, then the
        # body's content type (docs/decisions.md). The key's limits and budget are the leaf stage `govern`'s.
        self.governance.identify(ctx)
        inbound.read_gateway_headers(ctx)
        if ctx.grant is not None and ctx.grant.key.metadata:
            # The key's values win: a client cannot spoof them (docs/governance.md).
            ctx.metadata = {**ctx.metadata, **ctx.grant.key.metadata}
        ctx.body = Body.read_from(stream, declared_length, self.settings.max_body_bytes,
                                  self.settings.spool_memory_bytes)
        resolve.load_config(ctx, self.settings)
        resolve.check_providers(ctx, self.settings)
        inbound.check_content_type(ctx, has_body=declared_length != 0)
        assert ctx.config is not None
        router = Router(ctx, self.settings, self.upstream_request, self.send, self.extras)
        try:
            outcome = router.run(ctx.config)
        finally:
            ctx.retries_made = router.retries_made  # counted even when the chain stops on a gateway error
        ctx.target = outcome.target
        ctx.retry_count = outcome.retries
        ctx.option_index = outcome.path  # `config` for a header-only call too, as the reference says
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def upstream_request(self, ctx: RequestContext, target: ResolvedTarget, body: Body | None,
                         forward: tuple[str, ...], native: NativeRequest | None) -> UpstreamRequest:
        """Build a leaf's upstream request with this worker's session and the custom-host policy."""
        return upstream.build(ctx, target, body, forward, native, self.sessions.get(), self.policy, self.settings)

    def send(self, ctx: RequestContext, target: ResolvedTarget, request: UpstreamRequest,
             timeout_ms: int | None) -> Answer:
        """Make one upstream attempt with this worker's session."""
        return upstream.send(ctx, target, request, timeout_ms, self.sessions.get(), self.settings)

    def cache_key(self, ctx: RequestContext, target: ResolvedTarget, request: UpstreamRequest) -> str:
        """Return the cache key of a leaf's call (docs/cache.md)."""
        body = request.body
        # The client's own body is parsed already (routing read it); a rewritten one is parsed by the key.
        parsed = ctx.body_json() if body is ctx.body else None
        return cache_key(provider=target.provider.slug, url=request.url, method=ctx.method,
                         body=body.bytes() if body is not None else None,
                         content_type=ctx.headers.get("content-type"), credential=target.credential,
                         namespace=ctx.headers.get("x-portkey-cache-namespace"), parsed_json=parsed)
