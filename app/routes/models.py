"""GET /v1/models without a provider: the gateway's own model list (docs/governance.md, Model list)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.call.context import PROXY, UNIFIED
from app.governance import allow
from app.routes.common import answer_own, gateway, serve, serve_own

bp = Blueprint("models", __name__)


@bp.get("/v1/models", provide_automatic_options=False)
def models() -> Response:
    """List the catalog's models the caller's key may use, in OpenAI's shape; with a provider, proxy the call."""
    if request.headers.get("x-portkey-provider") or request.headers.get("x-portkey-config"):
        return serve(PROXY)
    ctx = serve_own(UNIFIED)
    settings = gateway().settings
    patterns = ctx.grant.key.models if ctx.grant is not None else ()
    data = [{"id": f"@{entry.name}/{model}", "object": "model", "created": 0, "owned_by": entry.provider}
            for entry in settings.catalog.values() for model in entry.models
            if allow.allowed(patterns, entry.provider, entry.name, model)]
    return answer_own(jsonify({"object": "list", "data": data}), ctx)
