"""A gateway key as governance knows it: who, which models, how fast, how much (docs/governance.md, Keys).

One shape for both kinds: static keys of the gateway file ([[keys]]) and managed keys of the state store.
The same checks read the admin API's JSON, the CLI's options and the gateway file's tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

MAX_METADATA_BYTES = 4096
MAX_NAME_CHARS = 200
MAX_MODEL_PATTERNS = 256
PERIODS = ("day", "month", "total")
LIMIT_NAMES = ("rpm", "tpm", "max_concurrent")
# The fields a key's creator or a PATCH may set; the secret, id and created_at are the gateway's.
EDITABLE = ("name", "expires_at", "revoked", "metadata", "models", "default_config", "limits", "budget")
MANAGED_PREFIX = "key_"
STATIC_PREFIX = "static:"


class KeyFieldError(ValueError):
    """A key field is wrong: `path` names it (`limits.rpm`), the message says what is expected."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.problem = message


@dataclass(frozen=True)
class Limits:
    """Rate limits of a key; None means no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None

    def as_json(self) -> dict[str, int]:
        """Return the limits that are set, by name."""
        return {name: getattr(self, name) for name in LIMIT_NAMES if getattr(self, name) is not None}


@dataclass(frozen=True)
class Budget:
    """How much a key may spend in USD per period: `day` and `month` (UTC calendar) or `total`."""

    usd: float
    period: str = "month"

    def period_of(self, now: float) -> str:
        """Return the name of the period `now` (epoch seconds) falls in: `2026-12-03`, `2026-12` or `total`."""
        if self.period == "total":
            return "total"
        moment = time.gmtime(now)  # cheaper than datetime's strftime, on every budgeted call
        if self.period == "day":
            return f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}"
        return f"{moment.tm_year:04d}-{moment.tm_mon:02d}"

    def as_json(self) -> dict[str, Any]:
        """Return the budget as the API shows it."""
        return {"usd": self.usd, "period": self.period}


@dataclass(frozen=True)
class Secret:
    """The SHA-256 of one secret of a key, and until when it works (None: for as long as the key)."""

    sha256: str
    valid_until: float | None = None

    def works_at(self, now: float) -> bool:
        """Tell whether this secret still opens its key at `now`."""
        return self.valid_until is None or now < self.valid_until


@dataclass(frozen=True)
class KeyRecord:
    """A gateway key: identity, policy and the hashes of its secrets (never the secrets themselves)."""

    id: str
    name: str
    created_at: float
    secrets: tuple[Secret, ...] = ()
    expires_at: float | None = None
    revoked: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    default_config: Any = None  # a config object, or the id of a saved config
    limits: Limits = Limits()
    budget: Budget | None = None

    @property
    def static(self) -> bool:
        """Tell whether the key comes from the gateway file (it cannot be changed through the API)."""
        return self.id.startswith(STATIC_PREFIX)

    @property
    def governed(self) -> bool:
        """Tell whether calls with this key are counted against limits or a budget."""
        return bool(self.limits) or self.budget is not None

    def refusal(self, now: float) -> str | None:
        """Return why the key cannot call at `now` (revoked, expired), or None when it can."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return f"expired at {iso_time(self.expires_at)}"
        return None

    def public(self) -> dict[str, Any]:
        """Return the key as the admin API shows it: every field but its secrets."""
        return {
            "id": self.id, "object": "key", "name": self.name, "static": self.static,
            "created_at": iso_time(self.created_at),
            "expires_at": iso_time(self.expires_at) if self.expires_at is not None else None,
            "revoked": self.revoked, "metadata": dict(self.metadata), "models": list(self.models),
            "default_config": self.default_config, "limits": self.limits.as_json(),
            "budget": self.budget.as_json() if self.budget is not None else None,
        }

    def to_store(self) -> dict[str, Any]:
        """Return the record as the state store keeps it (JSON-safe; hashes included)."""
        return {
            "id": self.id, "name": self.name, "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked": self.revoked, "metadata": dict(self.metadata), "models": list(self.models),
            "default_config": self.default_config, "limits": self.limits.as_json(),
            "budget": self.budget.as_json() if self.budget is not None else None,
            "secrets": [[s.sha256, s.valid_until] for s in self.secrets],
        }

    @classmethod
    def from_store(cls, data: Mapping[str, Any]) -> KeyRecord:
        """Return the record that to_store wrote."""
        budget = data.get("budget")
        return cls(
            id=data["id"], name=data["name"], created_at=float(data["created_at"]),
            secrets=tuple(Secret(sha, until) for sha, until in data.get("secrets", ())),
            expires_at=data.get("expires_at"), revoked=bool(data.get("revoked")),
            metadata=data.get("metadata") or {}, models=tuple(data.get("models") or ()),
            default_config=data.get("default_config"), limits=Limits(**(data.get("limits") or {})),
            budget=Budget(float(budget["usd"]), budget["period"]) if budget else None)


def new_secret() -> str:
    """Return a fresh gateway key secret."""
    return "pk-" + secrets.token_urlsafe(32)


def new_key_id() -> str:
    """Return a fresh managed key id."""
    return MANAGED_PREFIX + secrets.token_hex(8)


def hash_secret(value: str) -> str:
    """Return the SHA-256 hex digest a key's secret is stored as."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def iso_time(epoch: float) -> str:
    """Return epoch seconds as an ISO 8601 UTC time: `2026-12-03T20:00:00Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create(fields: Mapping[str, Any], now: float | None = None) -> tuple[KeyRecord, str]:
    """Return a new managed key from checked fields (read_fields) and its secret, which is shown once."""
    now = time.time() if now is None else now
    if "name" not in fields:
        raise KeyFieldError("name", "is required")
    secret = new_secret()
    record = KeyRecord(id=new_key_id(), name=fields["name"], created_at=now, secrets=(Secret(hash_secret(secret)),))
    return replace(record, **{k: v for k, v in fields.items() if k != "name"}), secret


def changed(record: KeyRecord, fields: Mapping[str, Any]) -> KeyRecord:
    """Return the record with checked fields (read_fields) replaced."""
    return replace(record, **fields)


def rotated(record: KeyRecord, grace_s: float, now: float | None = None) -> tuple[KeyRecord, str]:
    """Return the record with a new secret, the old ones working `grace_s` more seconds, and the new secret."""
    now = time.time() if now is None else now
    secret = new_secret()
    old = tuple(Secret(s.sha256, min(s.valid_until or math.inf, now + grace_s)) for s in record.secrets
                if grace_s > 0 and s.works_at(now))
    return replace(record, secrets=(Secret(hash_secret(secret)), *old)), secret


def read_fields(data: Any, partial: bool = False, prefix: str = "") -> dict[str, Any]:
    """Check a key's fields (the admin API's JSON, the CLI's options, a [[keys]] table); return them typed.

    partial: a PATCH, where every field is optional. Unknown fields are errors. Raises KeyFieldError.
    """
    if not isinstance(data, Mapping):
        raise KeyFieldError(prefix or "body", "must be a JSON object")
    unknown = [name for name in data if name not in EDITABLE]
    if unknown:
        raise KeyFieldError(prefix + str(unknown[0]), f"unknown field; known: {', '.join(EDITABLE)}")
    if not partial and "name" not in data:
        raise KeyFieldError(prefix + "name", "is required")
    out: dict[str, Any] = {}
    for name, value in data.items():
        out[name] = _READERS[name](value, prefix + name)
    return out


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise KeyFieldError(where, f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise KeyFieldError(where, "must not contain control characters")
    return value.strip()


def _time(value: Any, where: str) -> float | None:
    """Read a time: ISO 8601 (a missing zone is UTC) or epoch seconds; null clears it."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise KeyFieldError(where, "must be an ISO 8601 time or epoch seconds")
    if isinstance(value, int | float):
        if not 0 <= value < 253402300800:
            raise KeyFieldError(where, "epoch seconds out of range")
        return float(value)
    if isinstance(value, datetime):  # TOML has its own date-time type
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise KeyFieldError(where, "must be an ISO 8601 time (2026-12-31T00:00:00Z) or epoch seconds") from None
    else:
        raise KeyFieldError(where, "must be an ISO 8601 time or epoch seconds")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _revoked(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise KeyFieldError(where, "must be true or false")
    return value


def _metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KeyFieldError(where, "must be an object")
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=_no_json))
    except (TypeError, ValueError, RecursionError):
        raise KeyFieldError(where, "must be JSON") from None
    if size > MAX_METADATA_BYTES:
        raise KeyFieldError(where, f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    return dict(value)


def _no_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def _models(value: Any, where: str) -> tuple[str, ...]:
    from app.governance.allow import check_pattern

    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > MAX_MODEL_PATTERNS:
        raise KeyFieldError(where, f"must be a list of at most {MAX_MODEL_PATTERNS} model patterns")
    patterns = []
    for index, item in enumerate(value):
        problem = check_pattern(item)
        if problem:
            raise KeyFieldError(f"{where}[{index}]", problem)
        patterns.append(item.strip())
    return tuple(patterns)


def _default_config(value: Any, where: str) -> Any:
    """Check a default config: a saved config id or a config object (its schema is checked when it is used)."""
    from app.config.schema import parse_config
    from app.errors import BadRequest

    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip() or len(value) > 256:
            raise KeyFieldError(where, "must be a saved config id or a config object")
        return value.strip()
    if not isinstance(value, Mapping):
        raise KeyFieldError(where, "must be a saved config id or a config object")
    try:
        parse_config(dict(value))
    except BadRequest as err:
        raise KeyFieldError(where, "; ".join(err.errors or [err.message])) from None
    return dict(value)


def _limits(value: Any, where: str) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, Mapping):
        raise KeyFieldError(where, f"must be an object with any of {', '.join(LIMIT_NAMES)}")
    counts: dict[str, int | None] = {}
    for name, count in value.items():
        if name not in LIMIT_NAMES:
            raise KeyFieldError(f"{where}.{name}", f"unknown limit; known: {', '.join(LIMIT_NAMES)}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise KeyFieldError(f"{where}.{name}", "must be a whole number of at least 1 (or null: no limit)")
        counts[name] = count
    return Limits(**counts)


def _budget(value: Any, where: str) -> Budget | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise KeyFieldError(where, "must be an object {usd, period}")
    for name in value:
        if name not in ("usd", "period"):
            raise KeyFieldError(f"{where}.{name}", "unknown field; known: usd, period")
    usd = value.get("usd")
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise KeyFieldError(f"{where}.usd", "must be a number of dollars, 0 or more")
    period = value.get("period", "month")
    if period not in PERIODS:
        raise KeyFieldError(f"{where}.period", f"must be one of {', '.join(PERIODS)}")
    return Budget(float(usd), period)


_READERS: dict[str, Any] = {
    "name": _name, "expires_at": _time, "revoked": _revoked, "metadata": _metadata, "models": _models,
    "default_config": _default_config, "limits": _limits, "budget": _budget,
}
