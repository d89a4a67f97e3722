"""Health routes: `/` and `/healthz`; they never touch an upstream."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app import __version__

bp = Blueprint("health", __name__)


@bp.get("/")
def index() -> Response:
    """Say hello, as the reference gateway does."""
    return Response("AI Gateway says hey!", mimetype="text/plain")


@bp.get("/healthz")
def healthz() -> Response:
    """Report that this worker is up."""
    return jsonify(status="ok", version=__version__)


@bp.get("/metrics")
def metrics() -> Response:
    """Expose Prometheus metrics, summed over every worker; behind the admin key when one is set."""
    from flask import current_app

    from app.metrics import render_metrics
    from app.routes.admin import require_admin_key

    settings = current_app.extensions["portico"].settings
    if not settings.metrics_enabled:
        return Response("metrics are off ([metrics] enabled = false)\n", status=404, mimetype="text/plain")
    if settings.admin_key_sha256 is not None:
        require_admin_key()
    body, content_type = render_metrics()
    return Response(body, content_type=content_type)
