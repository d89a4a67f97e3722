"""The admin API outside /v1: request logs, analytics, metrics; protected by the admin key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request

from app.errors import BadRequest, GatewayError, Unauthorized
from app.http.client_ip import address
from app.logstore import LogStoreUnavailable

bp = Blueprint("admin", __name__)
MAX_RANGE_S = 366 * 24 * 3600
_GROUPS = ("provider", "model", "key")
T = TypeVar("T")


class AdminOff(GatewayError):
    """The admin API has no key configured."""

    status = 403


class LogsUnavailable(GatewayError):
    """The request-log file cannot be read right now; gateway calls are still served (docs/security.md)."""

    status = 503

    def __init__(self, problem: str) -> None:
        super().__init__(f"The request log is unavailable ([logs] path: {problem}); gateway calls are still served")


def read_logs(read: Callable[[], T]) -> T:
    """Run a read of the request log, answering 503 (not 500) when its file cannot be read."""
    try:
        return read()
    except LogStoreUnavailable as err:
        raise LogsUnavailable(str(err)) from None


def _presented_key() -> str | None:
    """Return the admin key from `Authorization: Bearer`, or Basic (any user name, the key as password)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


@bp.before_request
def require_admin_key() -> None:
    """Refuse every admin call without the admin key."""
    expected = current_app.extensions["portico"].settings.admin_key_sha256
    if expected is None:
        raise AdminOff("The admin API is off: set [admin] key in the gateway file")
    presented = _presented_key()
    digest = hashlib.sha256((presented or "").encode()).hexdigest()
    if presented is None or not hmac.compare_digest(digest, expected):
        raise Unauthorized("Invalid or missing admin key (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": 'Basic realm="Portico admin"'})


def _store() -> Any:
    store = current_app.extensions["portico"].log_store
    if store is None:
        raise BadRequest("The request log is off: set [logs] path in the gateway file")
    return store


def _number(name: str, default: float | None = None) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"Query parameter {name} must be a number (a Unix time in seconds)") from None


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"Query parameter {name} must be a whole number from {low} to {high}")
    return int(raw)


def _metadata_filter() -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in request.args.getlist("metadata"):
        name, sep, value = item.partition(":")
        if not sep or not name:
            raise BadRequest("Query parameter metadata must look like tag:value")
        tags[name] = value
    return tags


def _client_ip_filter() -> str | None:
    """Return the client_ip filter as the log writes it (`::FFFF:10.0.0.1` finds `10.0.0.1`), or None."""
    raw = (request.args.get("client_ip") or "").strip()
    if not raw:
        return None
    parsed = address(raw)
    return str(parsed) if parsed is not None else raw  # `unknown`, `unix`, an obfuscated name: as written


@bp.get("/admin/logs")
def logs() -> Response:
    """List request logs, newest first, filtered by time, key, provider, status, trace id, client or metadata tag."""
    status = request.args.get("status", "")
    status_class = status if status in ("2xx", "3xx", "4xx", "5xx") else None
    if status and status_class is None and not status.isdigit():
        raise BadRequest("Query parameter status must be a status code or one of 2xx, 3xx, 4xx, 5xx")
    rows = read_logs(lambda: _store().query(
        since=_number("since"), until=_number("until"), key_name=request.args.get("key") or None,
        provider=request.args.get("provider") or None, status=int(status) if status.isdigit() else None,
        status_class=status_class, trace_id=request.args.get("trace_id") or None,
        metadata=_metadata_filter() or None, limit=_int_arg("limit", 100, 1, 1000),
        before_id=_int_arg("before_id", None, 1, 2**62), client_ip=_client_ip_filter()))
    return jsonify(logs=rows, next_before_id=rows[-1]["id"] if rows and "id" in rows[-1] else None)


@bp.get("/admin/analytics")
def analytics() -> Response:
    """Requests, errors, p50/p95 latency, tokens and cost grouped by provider, model, key or metadata tag."""
    now = time.time()
    until = _number("until", now) or now
    since = _number("since", until - 24 * 3600) or until - 24 * 3600
    if not 0 <= until - since <= MAX_RANGE_S:
        raise BadRequest("The time range must run forward and span at most a year")
    group_by = request.args.get("group_by", "provider")
    if not (group_by in _GROUPS or group_by.startswith("metadata:") or group_by.startswith("time:")):
        raise BadRequest("group_by must be provider, model, key, metadata:<tag> or time:<seconds>")
    try:
        groups = read_logs(lambda: _store().analytics(since=since, until=until, group_by=group_by))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    return jsonify(since=since, until=until, group_by=group_by, groups=groups)
