"""Portico: an AI gateway that speaks Portkey's gateway API, on Flask and gunicorn."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.routing import RequestRedirect

__version__ = "0.1.0"

log = logging.getLogger(__name__)


def create_app(settings: Any = None) -> Flask:
    """Build the gateway app: settings, the Gateway, blueprints (unified first, proxy last), error handlers."""
    from app import cli
    from app.logs import setup_logging
    from app.pipeline import Gateway
    from app.routes import admin, dashboard, health, keys, models, proxy, unified
    from app.settings import load_settings

    settings = settings or load_settings()
    setup_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _match_paths_exactly(app)
    app.extensions["portico"] = Gateway(settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(unified.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(proxy.bp)  # last: the catch-all must never shadow a unified route
    cli.register(app)
    _register_error_handlers(app)
    return app


def _match_paths_exactly(app: Flask) -> None:
    """Route on the path as written and never redirect: werkzeug builds a Location from the Host header.

    A doubled slash is not merged (the proxy forwards paths verbatim), so `/v1//x` is a 404 and `/v1/a//b`
    is forwarded as written; no response carries a Location of the gateway's making (docs/security.md).
    Set before the blueprints register, since each rule copies these settings.
    """
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False

    @app.before_request
    def refuse_redirects() -> None:
        """Answer 404 where routing asked for a redirect (a trailing-slash rule added some day would)."""
        routing_error = request.routing_exception
        if isinstance(routing_error, RequestRedirect):
            raise NotFound()
        if isinstance(routing_error, NotFound) and "//" in request.path:
            raise NotFound("The path has an empty segment ('//'); the gateway does not merge slashes")


def _register_error_handlers(app: Flask) -> None:
    from app.errors import GatewayError, InternalError, MethodNotAllowed, UnknownRoute
    from app.routes.common import error_response, raw_path

    @app.errorhandler(GatewayError)
    def gateway_error(err: GatewayError) -> Response:
        return error_response(err, g.get("ctx"))

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        if isinstance(err, WerkzeugMethodNotAllowed):
            allowed = sorted(m for m in (err.valid_methods or []) if m not in ("HEAD", "OPTIONS"))
            return error_response(MethodNotAllowed(request.method, allowed), g.get("ctx"))
        if isinstance(err, NotFound) and request.url_rule is None:  # no route matched (a view's 404 keeps its own)
            detail = err.description if err.description != NotFound.description else None
            return error_response(UnknownRoute(raw_path(request.environ), detail), g.get("ctx"))
        plain = GatewayError(f"{err.name}: {err.description}")
        plain.status = err.code or 500
        return error_response(plain, g.get("ctx"))

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        ctx = g.get("ctx")
        log.error("unexpected error trace_id=%s", getattr(ctx, "trace_id", None), exc_info=err)
        return error_response(InternalError(), ctx)
