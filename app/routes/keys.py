"""The admin API for gateway keys (docs/governance.md, Admin API): create, list, change, rotate, revoke.

Managed keys live in the state store; static keys come from the gateway file and are shown, never changed here.
A secret leaves the gateway once, in the answer that made it; every other answer shows the key without it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request

from app.errors import BadRequest, GatewayError, PayloadTooLarge, StateStoreUnavailable
from app.governance import keys
from app.governance.keys import KeyFieldError, KeyRecord
from app.governance.store import StateStore, StateUnavailable
from app.routes.admin import require_admin_key
from app.routes.common import gateway

log = logging.getLogger(__name__)
bp = Blueprint("keys", __name__)
bp.before_request(require_admin_key)
T = TypeVar("T")
# A key's fields are small (metadata ≤ 4 KB); a config object is the largest part. Bounded all the same.
MAX_BODY_BYTES = 1024 * 1024
# A rotation's grace is for clients to switch over, not a second lifetime: a year at most.
MAX_GRACE_S = 366 * 24 * 3600.0


class KeyNotFound(GatewayError):
    """No key has this id."""

    status = 404

    def __init__(self, key_id: str) -> None:
        shown = key_id if len(key_id) <= 100 else key_id[:100] + "..."
        super().__init__(f"No gateway key has the id {shown!r}")


class StaticKeyReadOnly(GatewayError):
    """A static key cannot be changed through the API: the gateway file is its source."""

    status = 409

    def __init__(self, record: KeyRecord) -> None:
        super().__init__(f"The key {record.name!r} ({record.id}) is a static key: static keys are changed in the "
                         "gateway file ([[keys]]), not through the admin API")


def key_view(record: KeyRecord, store: StateStore, now: float) -> dict[str, Any]:
    """Return a key as the API and the CLI show it: its public fields and its use (never a secret or hash)."""
    period = record.budget.period_of(now) if record.budget is not None else None
    used = store.usage(record.id, now, period)
    return {**record.public(), "usage": {
        "spent_usd": used.spent_usd, "reserved_usd": used.reserved_usd, "period": period,
        "requests_last_60s": used.requests, "tokens_last_60s": used.tokens, "in_flight": used.in_flight}}


def old_secrets_until(record: KeyRecord) -> float | None:
    """Return until when the secrets a rotation kept still work (the latest), or None when none was kept."""
    ends = [secret.valid_until for secret in record.secrets[1:] if secret.valid_until is not None]
    return max(ends) if ends else None


def read_grace(data: Any) -> float:
    """Return a rotation's grace_s (default 0) from its JSON body; raises KeyFieldError."""
    if data is None:
        return 0.0
    if not isinstance(data, dict):
        raise KeyFieldError("body", "must be a JSON object {grace_s}")
    unknown = [name for name in data if name != "grace_s"]
    if unknown:
        raise KeyFieldError(str(unknown[0]), "unknown field; known: grace_s")
    grace = data.get("grace_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace) \
            or not 0 <= grace <= MAX_GRACE_S:
        raise KeyFieldError("grace_s", f"must be a number of seconds from 0 to {MAX_GRACE_S:.0f}")
    return float(grace)


def _stored(work: Callable[[], T]) -> T:
    """Run store work, answering 503 (naming the problem, which never holds a password) when it is unavailable."""
    try:
        return work()
    except StateUnavailable as err:
        raise StateStoreUnavailable(f"The gateway's state store is unavailable: {err}") from None


def _fields(work: Callable[[], T]) -> T:
    """Run a field check, answering 400 that names the field."""
    try:
        return work()
    except KeyFieldError as err:
        problem = f"{err.path}: {err.problem}"
        raise BadRequest(f"Invalid key field {problem}", errors=[problem]) from None


def _body(empty: Any = None) -> Any:
    """Return the request's JSON body (`empty` when there is none); 400 when it is not JSON, 413 when too large."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is over {MAX_BODY_BYTES} bytes")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return empty
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadRequest("The body must be a JSON object", errors=["body: must be JSON"]) from None


def _no_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which JSON does not have."""
    raise ValueError(name)


def _store() -> StateStore:
    return gateway().governance.store


def _find(key_id: str) -> KeyRecord:
    """Return a key by id: static from the gateway file, managed from the store (not a worker's copy); else 404."""
    for record in gateway().governance.index.static:
        if record.id == key_id:
            return record
    found = _stored(lambda: _store().get_key(key_id)) if key_id.startswith(keys.MANAGED_PREFIX) else None
    if found is None:
        raise KeyNotFound(key_id)
    return found


def _managed(key_id: str) -> KeyRecord:
    """Return a managed key by id; 409 for a static key, 404 for none."""
    record = _find(key_id)
    if record.static:
        raise StaticKeyReadOnly(record)
    return record


def _saved(record: KeyRecord, what: str) -> None:
    """Store the key, and make this worker see it at once (the others see it within a second)."""
    _stored(lambda: _store().put_key(record))
    gateway().governance.index.refresh(force=True)
    log.info("admin: gateway key %s (%r) %s", record.id, record.name, what)


def _shown(record: KeyRecord, status: int = 200) -> Response:
    response = jsonify(_stored(lambda: key_view(record, _store(), time.time())))
    response.status_code = status
    return response


def _secret_answer(body: dict[str, Any], status: int) -> Response:
    """Return an answer that carries a secret: never cached by anything on the way."""
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/admin/keys")
def create_key() -> Response:
    """Create a managed key; the answer holds its secret, the only time it is shown."""
    fields = _fields(lambda: keys.read_fields(_body()))
    record, secret = _fields(lambda: keys.create(fields))
    _saved(record, "created")
    return _secret_answer({**record.public(), "key": secret}, 201)


@bp.get("/admin/keys")
def list_keys() -> Response:
    """List every key, static ones first, then managed ones oldest first, each with its use."""
    now = time.time()
    store = _store()
    records = [*gateway().governance.index.static, *_stored(store.list_keys)]
    data = _stored(lambda: [key_view(record, store, now) for record in records])
    return jsonify({"object": "list", "data": data})


@bp.get("/admin/keys/<key_id>")
def get_key(key_id: str) -> Response:
    """Show one key with its use."""
    return _shown(_find(key_id))


@bp.patch("/admin/keys/<key_id>")
def update_key(key_id: str) -> Response:
    """Change any field of a managed key but its secret."""
    record = _managed(key_id)
    fields = _fields(lambda: keys.read_fields(_body(), partial=True))
    record = keys.changed(record, fields)
    _saved(record, f"changed ({', '.join(fields) or 'nothing'})")
    return _shown(record)


@bp.post("/admin/keys/<key_id>/rotate")
def rotate_key(key_id: str) -> Response:
    """Give a managed key a new secret; the old one keeps working for grace_s seconds (default 0)."""
    record = _managed(key_id)
    grace = _fields(lambda: read_grace(_body()))
    record, secret = keys.rotated(record, grace)
    _saved(record, f"rotated (grace {grace:g} s)")
    until = old_secrets_until(record)
    return _secret_answer({"id": record.id, "object": "key", "name": record.name, "key": secret,
                           "old_key_valid_until": keys.iso_time(until) if until is not None else None}, 200)


@bp.delete("/admin/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    """Revoke a managed key: it stops working at once and is kept, so the logs can still name it."""
    record = keys.changed(_managed(key_id), {"revoked": True})
    _saved(record, "revoked")
    return _shown(record)
