"""The handler chain every gateway call runs through, in one ordered list."""

from __future__ import annotations

from typing import BinaryIO

from app.http.body import Body
from app.http.hosts import HostPolicy
from app.http.sessions import SessionHolder
from app.pipeline import auth, inbound, resolve, upstream
from app.pipeline.answer import Answer
from app.pipeline.context import RequestContext, ResolvedTarget
from app.pipeline.routing import Outcome, Router
from app.settings import Settings


class Gateway:
    """The per-process gateway: settings, custom-host policy, upstream sessions and the stages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = HostPolicy(settings.custom_hosts_allow)
        self.sessions = SessionHolder(pool_size=max(settings.threads, 10), trust_env=settings.trust_env)

    def run(self, ctx: RequestContext, stream: BinaryIO, declared_length: int | None) -> Outcome:
        """Run the stages and the config's routing; return the answering target's outcome (an answer to relay)."""
        # Order matters: authenticate before anything costly; spool the body before routing reads it.
        auth.authenticate(ctx, self.settings)
        inbound.read_gateway_headers(ctx)
        inbound.check_content_type(ctx, has_body=declared_length != 0)
        ctx.body = Body.read_from(stream, declared_length, self.settings.max_body_bytes,
                                  self.settings.spool_memory_bytes)
        resolve.load_config(ctx, self.settings)
        assert ctx.config is not None
        outcome = Router(ctx, self.settings, self.send).run(ctx.config)
        ctx.target = outcome.target
        ctx.retry_count = outcome.retries
        if ctx.option_index:
            ctx.option_index = outcome.path
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def send(self, ctx: RequestContext, target: ResolvedTarget, body: Body | None, timeout_ms: int | None,
             forward: tuple[str, ...]) -> Answer:
        """Make one upstream attempt with this worker's session and the custom-host policy."""
        return upstream.send(ctx, target, body, timeout_ms, forward, self.sessions.get(), self.policy, self.settings)
