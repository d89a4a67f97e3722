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
