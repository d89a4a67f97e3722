"""`flask --app app.wsgi keys create|list|update|rotate|revoke`: managed gateway keys from the command line.

The commands mirror the admin API (docs/governance.md, Admin API) and check fields the same way. They open the
state store the gateway file names themselves: the flask command gives its own group an app without settings
(app/cli.py), and a running gateway sees their changes within a second through the store's version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click

from app.governance import keys
from app.governance.gate import static_records
from app.governance.keys import KeyFieldError, KeyRecord
from app.governance.store import StateStore, StateUnavailable
from app.governance.stores import open_store
from app.routes.keys import MAX_GRACE_S, key_view, old_secrets_until, read_grace
from app.settings import Settings, SettingsError, load_settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
SHOWN_ONCE = ("this secret is shown once: only its SHA-256 hash is stored; give it to the client now "
              "(x-portkey-api-key: <secret>)")
# What a field's path is called on the command line, for error lines.
OPTION_OF = {
    "name": "NAME/--name", "models": "--models", "limits": "--rpm/--tpm/--max-concurrent", "limits.rpm": "--rpm",
    "limits.tpm": "--tpm", "limits.max_concurrent": "--max-concurrent", "budget": "--budget-usd",
    "budget.usd": "--budget-usd", "budget.period": "--budget-period", "expires_at": "--expires-at",
    "metadata": "--metadata", "default_config": "--default-config", "revoked": "--revoked", "grace_s": "--grace-s",
}
MODELS_SHOWN = 40


class Clear:
    """The value `none` (or `null`): the option clears its field (no limit, no budget, no expiry)."""

    def __repr__(self) -> str:
        return "none"


CLEAR = Clear()


class OrNone(click.ParamType):
    """A number option that also takes `none` (or `null`) to clear its field."""

    def __init__(self, base: click.ParamType) -> None:
        self.base = base
        self.name = f"{base.name}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Return CLEAR for none/null, else the base type's value."""
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            return CLEAR
        return self.base.convert(value, param, ctx)


class KeysGroup(click.Group):
    """The `keys` group: a mistyped option is one line on stderr and exit 1, as a wrong field is."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning click's usage errors into one line."""
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "keys"
            fail(f"{where}: {err.format_message()}")


def fail(message: str) -> NoReturn:
    """Print one line on stderr and exit 1."""
    click.echo(f"portico: {message}", err=True)
    raise SystemExit(1)


@contextmanager
def state() -> Iterator[tuple[Settings, StateStore]]:
    """Yield the settings and their state store (closed afterwards); fail in one line if either is unusable."""
    try:
        settings = load_settings()
    except SettingsError as err:
        fail(str(err))
    try:
        store = open_store(settings.state_backend, settings.state_path)
    except StateUnavailable as err:
        fail(str(err))
    try:
        yield settings, store
    except StateUnavailable as err:
        fail(str(err))
    finally:
        store.close()


def checked(work: Callable[[], T]) -> T:
    """Run a field check; a wrong field is one line naming its option and its path in the API."""
    try:
        return work()
    except KeyFieldError as err:
        field = err.path.split("[", 1)[0]
        option = OPTION_OF.get(err.path) or OPTION_OF.get(field)
        fail(f"{option} ({err.path}): {err.problem}" if option else f"{err.path}: {err.problem}")


def managed(store: StateStore, settings: Settings, key_id: str) -> KeyRecord:
    """Return a managed key by id, or fail saying why not (a static key, or none with that id)."""
    record = store.get_key(key_id) if key_id.startswith(keys.MANAGED_PREFIX) else None
    if record is not None:
        return record
    if any(key.id == key_id for key in static_records(settings.keys)):
        fail(f"{key_id} is a static key: static keys are changed in the gateway file ({settings.source})")
    fail(f"no managed key has the id {key_id!r} (keys list shows them)")


def field_options(func: F) -> F:
    """Add the options of a key's fields, shared by create and update."""
    options = [
        click.option("--models", "models", multiple=True, metavar="PATTERN",
                     help="Allowed model pattern (openai/gpt-4o*, @catalog-name/*, */claude-*); repeatable."),
        click.option("--rpm", type=OrNone(click.INT), help="Calls per minute (none: no limit)."),
        click.option("--tpm", type=OrNone(click.INT), help="Tokens per minute (none: no limit)."),
        click.option("--max-concurrent", type=OrNone(click.INT), help="Calls in flight (none: no limit)."),
        click.option("--budget-usd", type=OrNone(click.FLOAT), help="Budget in USD per period (none: no budget)."),
        click.option("--budget-period", type=click.Choice(keys.PERIODS), help="Budget period (default month)."),
        click.option("--expires-at", metavar="ISO", help="Expiry: ISO 8601 (UTC if no zone) or epoch seconds; none."),
        click.option("--metadata", metavar="JSON", help="Metadata object joined to every call's metadata."),
        click.option("--default-config", metavar="JSON|ID",
                     help="Config used when a call names none: a JSON object or a saved config id; null clears."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def fields_of(options: Mapping[str, Any], record: KeyRecord | None) -> dict[str, Any]:
    """Return the API fields the given options set, merged into `record`'s limits and budget on update."""
    fields: dict[str, Any] = {}
    if options.get("name") is not None:
        fields["name"] = options["name"]
    if options.get("models"):
        fields["models"] = list(options["models"])
    if options.get("all_models"):
        fields["models"] = []
    given = {name: options[name] for name in keys.LIMIT_NAMES if options.get(name) is not None}
    if given:
        limits: dict[str, Any] = record.limits.as_json() if record is not None else {}
        limits.update({name: None if value is CLEAR else value for name, value in given.items()})
        fields["limits"] = limits
    usd, period = options.get("budget_usd"), options.get("budget_period")
    if usd is CLEAR:
        fields["budget"] = None
    elif usd is not None or period is not None:
        budget = record.budget.as_json() if record is not None and record.budget is not None else {}
        budget.update({k: v for k, v in (("usd", usd), ("period", period)) if v is not None})
        fields["budget"] = budget
    if options.get("expires_at") is not None:
        fields["expires_at"] = _time_option(options["expires_at"])
    if options.get("metadata") is not None:
        fields["metadata"] = _json_option(options["metadata"], "metadata")
    if options.get("default_config") is not None:
        fields["default_config"] = _config_option(options["default_config"])
    if options.get("revoked") is not None:
        fields["revoked"] = options["revoked"]
    return fields


def _time_option(raw: str) -> Any:
    """Return an --expires-at value as read_fields takes it: None, epoch seconds or the ISO text."""
    text = raw.strip()
    if text.lower() in ("none", "null", ""):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _json_option(raw: str, path: str) -> Any:
    """Return an option's JSON value, or fail naming the option."""
    try:
        return json.loads(raw)
    except ValueError:
        raise KeyFieldError(path, "must be JSON (an object such as '{\"team\": \"a\"}')") from None


def _config_option(raw: str) -> Any:
    """Return a --default-config value: a JSON object (or null), else the text as a saved config id."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if value is None or isinstance(value, dict | str) else raw


@click.group("keys", cls=KeysGroup)
def keys_group() -> None:
    """Create, list, change, rotate and revoke managed gateway keys (docs/governance.md)."""


@keys_group.command("create")
@click.argument("name")
@field_options
def create(name: str, **options: Any) -> None:
    """Create a managed key NAME and print its secret, the only time it is shown."""
    fields = checked(lambda: keys.read_fields(checked(lambda: fields_of({**options, "name": name}, None))))
    with state() as (_settings, store):
        record, secret = keys.create(fields)
        store.put_key(record)
    click.echo(f"created key {record.id} ({record.name!r})")
    click.echo(f"secret: {secret}")
    click.echo(SHOWN_ONCE)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON as GET /admin/keys answers.")
def list_(as_json: bool) -> None:
    """List every key (static ones of the gateway file, then managed ones) with its use; never a secret."""
    with state() as (settings, store):
        now = time.time()
        records = [*static_records(settings.keys), *store.list_keys()]
        views = [key_view(record, store, now) for record in records]
    if as_json:
        click.echo(json.dumps({"object": "list", "data": views}, indent=2))
    elif not views:
        click.echo(f"no keys ({settings.source}; state store: {_where(settings)})")
    else:
        click.echo(table(views, now))


@keys_group.command("update")
@click.argument("key_id", metavar="ID")
@click.option("--name", help="A new name.")
@click.option("--revoked/--no-revoked", default=None, help="Revoke the key, or take a revocation back.")
@click.option("--all-models", is_flag=True, help="Clear the allow-list: every model.")
@field_options
def update(key_id: str, **options: Any) -> None:
    """Change a managed key's fields (not its secret); limits and budget keep the parts not given."""
    if options.get("all_models") and options.get("models"):
        fail("--all-models and --models: give one of them")
    with state() as (settings, store):
        record = managed(store, settings, key_id)
        fields = checked(lambda: keys.read_fields(checked(lambda: fields_of(options, record)), partial=True))
        record = keys.changed(record, fields)
        store.put_key(record)
    click.echo(f"updated key {record.id} ({record.name!r}): {', '.join(fields) or 'nothing given'}")


@keys_group.command("rotate")
@click.argument("key_id", metavar="ID")
@click.option("--grace-s", type=float, default=0.0, show_default=True,
              help=f"Seconds the old secret keeps working (0 to {MAX_GRACE_S:.0f}).")
def rotate(key_id: str, grace_s: float) -> None:
    """Give a managed key a new secret and print it, the only time it is shown."""
    grace = checked(lambda: read_grace({"grace_s": grace_s}))
    with state() as (settings, store):
        record, secret = keys.rotated(managed(store, settings, key_id), grace)
        store.put_key(record)
    until = old_secrets_until(record)
    old = f"the old secret works until {keys.iso_time(until)}" if until is not None else \
        "the old secret no longer works"
    click.echo(f"rotated key {record.id} ({record.name!r}); {old}")
    click.echo(f"secret: {secret}")
    click.echo(SHOWN_ONCE)


@keys_group.command("revoke")
@click.argument("key_id", metavar="ID")
def revoke(key_id: str) -> None:
    """Revoke a managed key: it stops working within a second, and is kept so the logs can still name it."""
    with state() as (settings, store):
        record = keys.changed(managed(store, settings, key_id), {"revoked": True})
        store.put_key(record)
    click.echo(f"revoked key {record.id} ({record.name!r})")


def table(views: list[dict[str, Any]], now: float) -> str:
    """Return the keys as an aligned text table."""
    rows = [("ID", "NAME", "STATE", "LIMITS", "BUDGET", "EXPIRES", "MODELS")]
    for view in views:
        rows.append((view["id"], view["name"], _state(view, now), _limits(view), _budget(view),
                     view["expires_at"] or "-", _models(view)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)),
                                row[-1]]).rstrip() for row in rows)


def _state(view: Mapping[str, Any], now: float) -> str:
    kind = "static" if view["static"] else "managed"
    if view["revoked"]:
        return f"revoked ({kind})"
    expires = view["expires_at"]
    if expires is not None and _epoch(expires) <= now:
        return f"expired ({kind})"
    return f"active ({kind})"


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _limits(view: Mapping[str, Any]) -> str:
    limits = view["limits"]
    return " ".join(f"{name}={value}" for name, value in limits.items()) or "-"


def _budget(view: Mapping[str, Any]) -> str:
    budget = view["budget"]
    if budget is None:
        return "-"
    usage = view["usage"]
    return f"{usage['spent_usd']:.4g}/{budget['usd']:g} USD per {budget['period']}"


def _models(view: Mapping[str, Any]) -> str:
    text = ", ".join(view["models"]) or "all"
    return text if len(text) <= MODELS_SHOWN else text[:MODELS_SHOWN - 3] + "..."


def _where(settings: Settings) -> str:
    """Return where the state store is, without a Redis URL's password."""
    if settings.state_backend != "sqlite":
        return "redis"
    return settings.state_path or "a file of its own"
