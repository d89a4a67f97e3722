"""The handler chain every gateway call runs through, in one ordered list."""

from __future__ import annotations

from typing import BinaryIO

import requests

from app.http.body import Body
from app.http.hosts import HostPolicy
from app.http.sessions import SessionHolder
from app.pipeline import auth, inbound, resolve, upstream
from app.pipeline.context import RequestContext
from app.settings import Settings


class Gateway:
    """The per-process gateway: settings, custom-host policy, upstream sessions and the stages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = HostPolicy(settings.custom_hosts_allow)
        self.sessions = SessionHolder(pool_size=max(settings.threads, 10), trust_env=settings.trust_env)

    def run(self, ctx: RequestContext, stream: BinaryIO, declared_length: int | None) -> requests.Response:
        """Run the stages, spool the body, make the upstream call; return the unread upstream response."""
        # Order matters: authenticate before anything costly, resolve before the body is spooled.
        auth.authenticate(ctx, self.settings)
        inbound.read_gateway_headers(ctx)
        resolve.resolve_target(ctx, self.settings)
        resolve.check_supported(ctx)
        inbound.check_content_type(ctx, has_body=declared_length != 0)
        ctx.body = Body.read_from(stream, declared_length, self.settings.max_body_bytes,
                                  self.settings.spool_memory_bytes)
        return upstream.send(ctx, self.sessions.get(), self.policy, self.settings)
