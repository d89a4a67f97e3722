"""Gateway-key authentication (SPEC 3)."""

from __future__ import annotations

import hashlib
import hmac

from app.errors import Unauthorized
from app.pipeline.context import RequestContext
from app.settings import Settings


def authenticate(ctx: RequestContext, settings: Settings) -> None:
    """Attach the key's name to the call, or refuse it with 401."""
    if settings.open_mode:
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
