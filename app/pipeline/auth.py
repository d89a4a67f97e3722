"""Gateway-key authentication (docs/decisions.md, Gateway keys; docs/gateway-file.md)."""

from __future__ import annotations

import hashlib
import hmac

from app.call.context import RequestContext
from app.errors import Unauthorized
from app.settings import Settings


def authenticate(ctx: RequestContext, settings: Settings) -> None:
    """Attach the key's name to the call, or refuse it with 401."""
    if settings.open_mode:
        if "forwarded" in ctx.headers or "x-forwarded-for" in ctx.headers:
            # Behind a reverse proxy every caller arrives from the proxy's loopback address: open mode's
            # "only local clients" would admit the whole network (docs/observability.md, Client address).
            raise Unauthorized("This gateway has no keys and the call came through a proxy (Forwarded or "
                               "X-Forwarded-For): gateway keys are needed behind a proxy; add [[keys]] to the "
                               "gateway file")
        return
    presented = ctx.headers.get("x-portkey-api-key")
    if not presented:
        raise Unauthorized("Missing x-portkey-api-key header: this gateway requires a gateway key")
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
    name = None
    # Compare against every key so the time taken does not tell which key came close.
    for key in settings.keys:
        if hmac.compare_digest(digest, key.sha256):
            name = key.name
    if name is None:
        raise Unauthorized("Invalid x-portkey-api-key: no gateway key matches")
    ctx.key_name = name
