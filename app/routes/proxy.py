"""The catch-all proxy: /v1/proxy/<path> (legacy) and /v1/<path>, forwarded byte for byte (docs/decisions.md, Proxy)."""

from __future__ import annotations

from flask import Blueprint, Response

from app.call.context import PROXY
from app.routes.common import serve

bp = Blueprint("proxy", __name__)
METHODS = ["GET", "POST", "PUT", "DELETE"]


@bp.route("/v1/proxy", methods=METHODS, defaults={"path": ""}, provide_automatic_options=False)
@bp.route("/v1/proxy/<path:path>", methods=METHODS, provide_automatic_options=False)
def legacy_proxy(path: str) -> Response:
    """Forward a legacy /v1/proxy call with the /v1/proxy prefix removed."""
    return serve(PROXY)


@bp.route("/v1/<path:path>", methods=METHODS, provide_automatic_options=False)
def proxy(path: str) -> Response:
    """Forward any other /v1 call to the provider as it is."""
    return serve(PROXY)
