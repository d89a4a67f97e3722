"""Settings: the only reader of os.environ and the gateway file (TOML)."""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from app.errors import GatewayError
from app.http.client_ip import TrustedProxies, parse_trusted
from app.http.headers import proxy_drop_set
from app.http.hosts import HostPolicy, UnresolvedHost
from app.providers.registry import OPTION_NAMES, PROVIDERS, odd_character, option_problem

DEFAULT_PORT = 8787
DEFAULT_BIND = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_SPOOL_MEMORY_BYTES = 1024 * 1024
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_LOGS_PATH = "portico-logs.sqlite"
DEFAULT_STATE_PATH = "portico-state.sqlite"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Catalog fields that name how to reach a provider (docs/gateway-file.md, [catalog]); api_key is the credential.
# models: the entry's model ids, listed by GET /v1/models (docs/governance.md).
CATALOG_FIELDS = ("provider", "api_key", "custom_host", "models", *OPTION_NAMES)

# Every section of the gateway file and the keys each may hold (docs/gateway-file.md). The strict check refuses
# anything else, and the reader only reads keys listed here, so the two cannot drift apart.
FILE_SECTIONS: dict[str, tuple[str, ...]] = {
    # [[keys]]: an array of tables; a key's governance fields as the admin API takes them (docs/governance.md)
    "keys": ("name", "sha256", "key", "expires_at", "revoked", "metadata", "models", "default_config", "limits",
             "budget"),
    "custom_hosts": ("allow",),
    "catalog": CATALOG_FIELDS,  # [catalog.<name>]: one table per entry
    "configs": (),  # [configs.<id>]: the config schema knows their keys
    "limits": ("max_body_bytes", "spool_memory_bytes"),
    "retry": ("backoff_base_ms",),
    "upstream": ("connect_timeout_ms", "read_timeout_ms", "trust_env"),
    "proxy": ("ignore_headers", "trusted_proxies"),
    "logs": ("access_log", "path", "retention_days"),
    "metrics": ("enabled",),
    "admin": ("key",),
    "pricing": (),  # [pricing."provider/model"]: the price fields of app.usage.pricing
    "cache": ("backend", "max_bytes", "max_entry_bytes"),
    "state": ("path", "backend"),
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONFIG_ERROR = re.compile(r"path: (?P<path>.*?), message: (?P<message>.*)")


class SettingsError(Exception):
    """The gateway file or environment is unusable; the message is one line naming the key."""


@dataclass(frozen=True)
class GatewayKey:
    """A static gateway key: its name (for logs), the SHA-256 of its value, and its governance fields."""

    name: str
    sha256: str
    # The checked fields of app.governance.keys.read_fields (models, limits, budget, ...); none by default.
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogEntry:
    """A Model Catalog entry (`@name`): a provider slug plus its credential and options."""

    name: str
    provider: str
    api_key: str | None = None
    custom_host: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CatalogEntry(name={self.name!r}, provider={self.provider!r}, api_key=<redacted>)"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway reads at start-up, frozen."""

    bind: str = DEFAULT_BIND
    workers: int = 1
    threads: int = 32
    log_level: str = "info"
    source: str = "built-in defaults"
    keys: tuple[GatewayKey, ...] = ()
    custom_hosts_allow: tuple[str, ...] = ()
    catalog: Mapping[str, CatalogEntry] = field(default_factory=dict)
    configs: Mapping[str, Any] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    spool_memory_bytes: int = DEFAULT_SPOOL_MEMORY_BYTES
    backoff_base_ms: int = 1000
    trust_env: bool = False
    ignore_headers: frozenset[str] = frozenset()
    trusted_proxies: TrustedProxies = TrustedProxies()
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    access_log: bool = True
    metrics_enabled: bool = True
    logs_path: str | None = None
    logs_retention_days: int = 30
    admin_key_sha256: str | None = field(default=None, repr=False)
    pricing: Mapping[str, Any] = field(default_factory=dict)
    cache_backend: str = "memory"
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    cache_max_entry_bytes: int = DEFAULT_CACHE_MAX_BYTES // 8
    # The state store (docs/governance.md): "sqlite" keeps `state_path` (None: a file of this app's own, gone
    # when it stops; tests), or a redis:// URL shared by hosts.
    state_backend: str = "sqlite"
    state_path: str | None = None
    # A directory the workers of one gunicorn master share (the host-wide cache file); None: this process's own.
    run_dir: str | None = None
    # Client read deadlines and the shutdown grace, in seconds (docs/deploy.md).
    header_timeout_s: int = 10
    body_timeout_s: int = 60
    graceful_timeout_s: int = 30

    @cached_property
    def proxy_drop(self) -> frozenset[str]:
        """Return the client headers the proxy never forwards (built-in list plus [proxy] ignore_headers)."""
        return proxy_drop_set(self.ignore_headers)

    @property
    def open_mode(self) -> bool:
        """Return True when no gateway key is configured."""
        return not self.keys


def bind_address(raw: str | None) -> str:
    """Return GATEWAY_BIND as gunicorn takes it: a host without a port gets 8787, not gunicorn's 8000."""
    bind = (raw or "").strip()
    if not bind:
        return DEFAULT_BIND
    if bind.startswith(("unix:", "fd://")):
        return bind
    if bind.startswith("["):
        return bind if "]:" in bind else f"{bind}:{DEFAULT_PORT}"
    if bind.count(":") > 1:  # a bare IPv6 address: gunicorn wants it in brackets
        try:
            return f"[{ipaddress.IPv6Address(bind)}]:{DEFAULT_PORT}"
        except ValueError:
            return bind
    return bind if ":" in bind else f"{bind}:{DEFAULT_PORT}"


def bind_is_loopback(bind: str) -> bool:
    """Return True when a gunicorn bind address only listens on loopback."""
    if bind.startswith("unix:"):
        return True
    host = bind.rsplit(":", 1)[0] if not bind.startswith("[") else bind[1:bind.index("]")]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_workers() -> int:
    """Return 2 × cores + 1, capped at 8 (threads carry the concurrency)."""
    return min(2 * (os.cpu_count() or 1) + 1, 8)


def load_settings(environ: Mapping[str, str] | None = None, path: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read the gateway file and the environment into frozen Settings."""
    env = os.environ if environ is None else environ
    file_path = path or env.get("GATEWAY_CONFIG") or ("gateway.toml" if Path("gateway.toml").exists() else None)
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if file_path:
        data = _read_toml(file_path)
        source = file_path
    if overrides:
        data = {**data, **overrides}
    reader = _Reader(source, env)
    reader.check_known(data)  # first: a misspelt section must not pass as an empty one (docs/gateway-file.md)
    allow = tuple(reader.str_list(data.get("custom_hosts", {}), "custom_hosts", "allow"))
    policy = reader.host_policy(allow)
    settings = Settings(
        bind=bind_address(env.get("GATEWAY_BIND")),
        workers=reader.env_int("GATEWAY_WORKERS", default_workers()),
        threads=reader.env_int("GATEWAY_THREADS", 32),
        log_level=reader.log_level(env.get("GATEWAY_LOG_LEVEL", "info")),
        header_timeout_s=reader.env_int("GATEWAY_HEADER_TIMEOUT", 10),
        body_timeout_s=reader.env_int("GATEWAY_BODY_TIMEOUT", 60),
        graceful_timeout_s=reader.env_int("GATEWAY_GRACEFUL_TIMEOUT", 30),
        source=source,
        keys=reader.keys(data.get("keys", [])),
        custom_hosts_allow=allow,
        catalog=reader.catalog(data.get("catalog", {}), policy),
        configs=reader.configs(data.get("configs", {}), policy),
        max_body_bytes=reader.int_in(data.get("limits", {}), "limits", "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        spool_memory_bytes=reader.int_in(data.get("limits", {}), "limits", "spool_memory_bytes",
                                         DEFAULT_SPOOL_MEMORY_BYTES),
        backoff_base_ms=reader.int_in(data.get("retry", {}), "retry", "backoff_base_ms", 1000),
        trust_env=reader.bool_in(data.get("upstream", {}), "upstream", "trust_env", False),
        ignore_headers=frozenset(reader.str_list(data.get("proxy", {}), "proxy", "ignore_headers")),
        trusted_proxies=reader.trusted_proxies(data.get("proxy", {})),
        connect_timeout_s=reader.int_in(data.get("upstream", {}), "upstream", "connect_timeout_ms", 10_000) / 1000,
        read_timeout_s=reader.int_in(data.get("upstream", {}), "upstream", "read_timeout_ms", 600_000) / 1000,
        access_log=reader.bool_in(data.get("logs", {}), "logs", "access_log", True),
        logs_path=reader.logs_path(data.get("logs", {})),
        metrics_enabled=reader.bool_in(data.get("metrics", {}), "metrics", "enabled", True),
        logs_retention_days=reader.int_in(data.get("logs", {}), "logs", "retention_days", 30, minimum=1),
        admin_key_sha256=reader.admin_key(data.get("admin", {})),
        pricing=reader.pricing(data.get("pricing", {})),
        cache_backend=reader.cache_backend(data.get("cache", {})),
        state_backend=reader.state_backend(data.get("state", {})),
        state_path=reader.state_path(data.get("state", {})),
        run_dir=env.get("PORTICO_RUN_DIR") or None,
        cache_max_bytes=reader.int_in(data.get("cache", {}), "cache", "max_bytes", DEFAULT_CACHE_MAX_BYTES),
        cache_max_entry_bytes=reader.int_in(data.get("cache", {}), "cache", "max_entry_bytes",
                                            reader.int_in(data.get("cache", {}), "cache", "max_bytes",
                                                          DEFAULT_CACHE_MAX_BYTES) // 8),
    )
    for index, key in enumerate(settings.keys):
        default = key.fields.get("default_config")
        if isinstance(default, str) and default not in settings.configs:
            raise reader.fail(f"keys[{index}].default_config", f"no saved config [configs.{default}] in the file")
    return settings


def check_start(settings: Settings, bound: Sequence[str] | None = None, managed_keys: bool = False) -> str | None:
    """Refuse an open gateway off loopback; return the warning line for an open one on loopback.

    bound: the addresses gunicorn really listens on (GUNICORN_CMD_ARGS may differ from GATEWAY_BIND).
    managed_keys: the state store holds keys (docs/governance.md): the gateway is not open then.
    """
    if not settings.open_mode or managed_keys:
        return None
    addresses = list(bound) if bound else [settings.bind]
    public = [address for address in addresses if not bind_is_loopback(address)]
    if public:
        raise SettingsError(
            f"refusing to start: no gateway keys are configured ({settings.source}) and the bind address "
            f"{', '.join(public)} is not loopback; add [[keys]] to the gateway file or bind to 127.0.0.1")
    return (f"no gateway keys configured ({settings.source}): running OPEN, "
            f"any local client may call on {', '.join(addresses)}; behind a reverse proxy gateway keys are "
            "needed: calls carrying Forwarded or X-Forwarded-For are refused (401) until [[keys]] are added")


def check_logs_path(settings: Settings) -> None:
    """Refuse to start when the request-log file ([logs] path) cannot be created or opened (docs/security.md).

    Only for the master's first start, with the operator watching: a worker never fails because of the log.
    """
    if not settings.logs_path:
        return
    from app.logstore.schema import LogStoreUnavailable, prepare

    try:
        prepare(settings.logs_path)
    except LogStoreUnavailable as err:
        raise SettingsError(f"{settings.source}: [logs] path = {settings.logs_path!r}: {err}") from None


def check_state(settings: Settings) -> None:
    """Refuse to start when the state store's SQLite file cannot be opened (a Redis that is away may come back)."""
    if settings.state_backend != "sqlite" or settings.state_path is None:
        return
    from app.governance.store import StateUnavailable
    from app.governance.stores import open_store

    try:
        open_store("sqlite", settings.state_path).close()
    except StateUnavailable as err:
        raise SettingsError(f"{settings.source}: [state] path = {settings.state_path!r}: {err}") from None


# The settings this process last accepted. gunicorn's master sets them on each good read of the gateway file,
# and the workers it forks build their app from them: a reload with a bad file keeps the running settings, and
# a worker never reads a file its master did not check (docs/gateway-file.md, Reloading).
_adopted: Settings | None = None


def adopt(settings: Settings) -> None:
    """Make settings the ones that workers forked from this process use."""
    global _adopted
    _adopted = settings


def adopted() -> Settings | None:
    """Return the settings this process's master accepted last, or None outside gunicorn."""
    return _adopted


def dotted(parts: Sequence[str | int]) -> str:
    """Return a key's path as the gateway file names it: `catalog.x.api_key`, `configs.pc-x.targets[0]`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


def unknown_problem(name: str, known: Sequence[str], kind: str = "key") -> str:
    """Return "unknown key" with the closest known name as a hint, or the known names when none is close."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind}; did you mean `{close[0]}`?"
    return f"unknown {kind}; known: {', '.join(known)}" if known else f"unknown {kind}"


def _unknown_keys(data: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Yield (path, problem) for each section or key of the file that FILE_SECTIONS does not list, in file order."""
    for name, section in data.items():
        if name not in FILE_SECTIONS:
            yield (name,), _unknown_section(name, section)
            continue
        for path, table, known in _tables_of(name, section):
            for key in table:
                if key not in known:
                    yield (*path, key), unknown_problem(str(key), known)


def _unknown_section(name: str, value: Any) -> str:
    """Return the problem of an unknown top-level name, pointing at the section a stray key belongs in."""
    kind = "section" if isinstance(value, dict | list) else "key"
    homes = [section for section, keys in FILE_SECTIONS.items() if name in keys]
    if homes and not difflib.get_close_matches(name, list(FILE_SECTIONS), n=1):
        return f"unknown {kind}; did you mean `[{homes[0]}] {name}`?"
    return unknown_problem(name, list(FILE_SECTIONS), kind)


def _tables_of(name: str, section: Any) -> Iterator[tuple[tuple[str | int, ...], Mapping[str, Any], tuple[str, ...]]]:
    """Yield (path, table, allowed keys) for the tables of one section; wrong types are the reader's to report."""
    if name == "configs":
        return  # the config schema refuses unknown keys itself, at every depth
    if name == "keys" and isinstance(section, list):
        for index, item in enumerate(section):
            if isinstance(item, dict):
                yield (name, index), item, FILE_SECTIONS[name]
    elif name in ("catalog", "pricing") and isinstance(section, dict):
        from app.usage.pricing import FIELDS as PRICE_FIELDS

        known = tuple(PRICE_FIELDS) if name == "pricing" else FILE_SECTIONS[name]
        for entry_name, entry in section.items():
            if isinstance(entry, dict):
                yield (name, entry_name), entry, known
    elif isinstance(section, dict):
        yield (name,), section, FILE_SECTIONS[name]


def _no_lookup(*_args: Any, **_kwargs: Any) -> list[Any]:
    """Refuse to resolve: at start-up a host name that does not resolve (yet) is not an error."""
    raise OSError("names are not resolved at start-up")


def hash_key(value: str) -> str:
    """Return the SHA-256 hex digest that the gateway file stores for a key."""
    return hashlib.sha256(value.encode()).hexdigest()


def _read_toml(file_path: str) -> dict[str, Any]:
    try:
        with open(file_path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise SettingsError(f"{file_path}: file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{file_path}: not valid TOML: {err}") from err


class _Reader:
    """Reads sections of the gateway file, naming the file and key in every error."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env

    def fail(self, where: str, problem: str) -> SettingsError:
        return SettingsError(f"{self.source}: {where}: {problem}")

    def check_known(self, data: Mapping[str, Any]) -> None:
        """Refuse the first section or key the file may not hold, naming its dotted path and a close known one."""
        for path, problem in _unknown_keys(data):
            raise self.fail(dotted(path), problem)

    def entry(self, section: Any, name: str, key: str, default: Any) -> Any:
        """Return section[key] as written; only keys that FILE_SECTIONS lists may be read."""
        if key not in FILE_SECTIONS[name]:
            raise KeyError(f"{name}.{key} is read but missing from FILE_SECTIONS")  # a bug, not a bad file
        return self.table(section, name).get(key, default)

    def value(self, raw: Any, where: str) -> Any:
        """Resolve `env:NAME` strings from the environment."""
        if isinstance(raw, str) and raw.startswith("env:"):
            name = raw[4:]
            if name not in self.env or self.env[name] == "":
                raise self.fail(where, f"environment variable {name} is not set")
            return self.env[name]
        return raw

    def string(self, raw: Any, where: str) -> str:
        val = self.value(raw, where)
        if not isinstance(val, str) or not val:
            raise self.fail(where, "must be a non-empty string")
        return val

    def table(self, raw: Any, where: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        return raw

    def str_list(self, section: Any, name: str, key: str, where: str | None = None) -> list[str]:
        where = where or f"{name}.{key}"
        raw = self.entry(section, name, key, [])
        if not isinstance(raw, list):
            raise self.fail(where, "must be a list of strings")
        return [self.string(item, f"{where}[{i}]") for i, item in enumerate(raw)]

    def int_in(self, section: Any, name: str, key: str, default: int, minimum: int = 0) -> int:
        raw = self.value(self.entry(section, name, key, default), f"{name}.{key}")
        try:
            val = int(raw)
        except (TypeError, ValueError):
            raise self.fail(f"{name}.{key}", f"must be an integer, got {raw!r}") from None
        if isinstance(raw, bool) or val < 0:
            raise self.fail(f"{name}.{key}", "must be a non-negative integer")
        if val < minimum:
            raise self.fail(f"{name}.{key}", f"must be at least {minimum}, got {val}")
        return val

    def logs_path(self, section: Any) -> str | None:
        """Return the request-log file; "" turns the log store off."""
        raw = self.value(self.entry(section, "logs", "path", DEFAULT_LOGS_PATH), "logs.path")
        if not isinstance(raw, str):
            raise self.fail("logs.path", "must be a file path, or \"\" to keep no request log")
        return raw or None

    def trusted_proxies(self, section: Any) -> TrustedProxies:
        """Return [proxy] trusted_proxies: the peers whose X-Forwarded-For / Forwarded are believed."""
        try:
            return parse_trusted(self.str_list(section, "proxy", "trusted_proxies"))
        except ValueError as err:
            raise self.fail("proxy.trusted_proxies", str(err)) from None

    def admin_key(self, section: Any) -> str | None:
        """Return the SHA-256 of the admin key (kept hashed, like gateway keys)."""
        raw = self.entry(section, "admin", "key", None)
        return hash_key(self.string(raw, "admin.key")) if raw is not None else None

    def pricing(self, section: Any) -> dict[str, Any]:
        """Validate [pricing."provider/model"] entries now; the gateway builds its price table from them."""
        from app.usage import PricingTable

        raw = self.table(section, "pricing")
        try:
            PricingTable.parse_overrides(raw)
        except ValueError as err:
            raise self.fail("pricing", str(err)) from None
        return raw

    def cache_backend(self, section: Any) -> str:
        return self.backend(section, "cache", "memory")

    def state_backend(self, section: Any) -> str:
        return self.backend(section, "state", "sqlite")

    def backend(self, section: Any, name: str, embedded: str) -> str:
        """Return a section's backend: its embedded one (memory, sqlite) or a Redis URL redis can parse."""
        raw = self.string(self.entry(section, name, "backend", embedded), f"{name}.backend")
        if raw != embedded and not raw.startswith(("redis://", "rediss://", "unix://")):
            raise self.fail(f"{name}.backend",
                            f"must be \"{embedded}\" or a redis:// URL, got {raw.split('://')[0]!r}")
        if raw != embedded:
            from redis.connection import parse_url

            try:  # a URL redis cannot parse would stop every worker at boot instead
                parse_url(raw)
            except ValueError as err:
                raise self.fail(f"{name}.backend", f"not a usable Redis URL: {err}") from None
        return raw

    def state_path(self, section: Any) -> str:
        """Return the state store's SQLite file ([state] path)."""
        return self.string(self.entry(section, "state", "path", DEFAULT_STATE_PATH), "state.path")

    def bool_in(self, section: Any, name: str, key: str, default: bool) -> bool:
        raw = self.value(self.entry(section, name, key, default), f"{name}.{key}")
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if not isinstance(raw, bool):
            raise self.fail(f"{name}.{key}", "must be true or false")
        return raw

    def env_int(self, name: str, default: int) -> int:
        raw = self.env.get(name)
        if raw in (None, ""):
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise SettingsError(f"environment: {name}: must be a positive integer, got {raw!r}")
        return int(raw)

    def log_level(self, raw: str) -> str:
        if raw.lower() not in _LOG_LEVELS:
            raise SettingsError(f"environment: GATEWAY_LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)}")
        return raw.lower()

    def keys(self, raw: Any) -> tuple[GatewayKey, ...]:
        if not isinstance(raw, list):
            raise self.fail("keys", "must be an array of tables ([[keys]])")
        keys: list[GatewayKey] = []
        for i, item in enumerate(raw):
            where = f"keys[{i}]"
            item = self.table(item, where)
            name = self.string(item.get("name"), f"{where}.name")
            if ("sha256" in item) == ("key" in item):
                raise self.fail(where, "give exactly one of sha256 or key")
            if "sha256" in item:
                digest = self.string(item["sha256"], f"{where}.sha256").lower()
                if not _HEX64.match(digest):
                    raise self.fail(f"{where}.sha256", "must be 64 hex characters (SHA-256 of the key)")
            else:
                digest = hash_key(self.string(item["key"], f"{where}.key"))
            keys.append(GatewayKey(name=name, sha256=digest, fields=self.key_fields(item, where)))
        names = [key.name for key in keys]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            # A static key's counters and spend are kept under its name: two keys must not share them.
            raise self.fail("keys", f"two keys are named {twice!r}; names must be unique")
        return tuple(keys)

    def key_fields(self, item: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Return a [[keys]] table's governance fields, checked as the admin API checks them."""
        from app.governance.keys import KeyFieldError, read_fields

        given = {k: v for k, v in item.items() if k not in ("name", "sha256", "key")}
        try:
            return read_fields(given, partial=True)
        except KeyFieldError as err:
            raise self.fail(f"{where}.{err.path}", err.problem) from None

    def host_policy(self, allow: Sequence[str]) -> HostPolicy:
        """Return the custom-host policy of custom_hosts.allow, which start-up checks custom hosts against."""
        try:
            return HostPolicy(allow, resolver=_no_lookup)
        except (TypeError, ValueError) as err:
            raise self.fail("custom_hosts.allow", str(err)) from None

    def custom_host(self, policy: HostPolicy, url: str, where: str) -> None:
        """Refuse a custom host every call would refuse: malformed, or an address the policy refuses.

        A name is not looked up here: one that does not resolve at start-up may resolve later.
        """
        try:
            policy.check(url)
        except UnresolvedHost:
            pass
        except GatewayError as err:
            raise self.fail(where, "; ".join(err.errors or []) or err.message) from None

    def configs(self, raw: Any, policy: HostPolicy) -> dict[str, Any]:
        """Validate saved configs now, so a bad one stops start-up instead of failing calls."""
        from app.config.compiled import compile_config
        from app.config.schema import parse_config

        parsed: dict[str, Any] = {}
        for config_id, config in self.table(raw, "configs").items():
            try:
                parsed[config_id] = parse_config(self.table(config, dotted(("configs", config_id))))
            except GatewayError as err:
                raise self.fail(*_config_problem(config_id, err)) from None
            for path, url in _config_custom_hosts(parsed[config_id], ("configs", config_id)):
                self.custom_host(policy, url, dotted((*path, "custom_host")))
            parsed[config_id] = compile_config(parsed[config_id])  # once, not per call (docs/configs.md)
        return parsed

    def catalog(self, raw: Any, policy: HostPolicy) -> dict[str, CatalogEntry]:
        entries: dict[str, CatalogEntry] = {}
        for name, item in self.table(raw, "catalog").items():
            where = dotted(("catalog", name))
            item = self.table(item, where)
            models = tuple(self.str_list(item, "catalog", "models", where=f"{where}.models"))
            values = {k: self.string(v, f"{where}.{k}") for k, v in item.items() if k != "models"}
            if "provider" not in values:
                raise self.fail(where, "provider is required")
            if values["provider"] not in PROVIDERS:
                raise self.fail(f"{where}.provider", f"unknown provider {values['provider']!r}")
            for key, value in values.items():
                # Each value goes into an upstream URL or header: a call could never send it (docs/security.md).
                problem = option_problem(key, value) or odd_character(value, in_header=key != "custom_host")
                if problem:
                    raise self.fail(f"{where}.{key}", problem)
            if "custom_host" in values:
                self.custom_host(policy, values["custom_host"], f"{where}.custom_host")
            options = {k: v for k, v in values.items() if k not in ("provider", "api_key", "custom_host")}
            entries[name] = CatalogEntry(name=name, provider=values["provider"], api_key=values.get("api_key"),
                                         custom_host=values.get("custom_host"), options=options, models=models)
        return entries


def _config_problem(config_id: str, err: GatewayError) -> tuple[str, str]:
    """Return (dotted key, problem) for a saved config the schema refused, with a hint for an unknown key."""
    for line in err.errors or []:
        found = _CONFIG_ERROR.fullmatch(line)
        if found is None:
            continue
        path: list[str | int] = ["configs", config_id]
        path += [int(part) if part.isdigit() else part for part in found["path"].split(",") if part]
        problem = found["message"]
        if problem == "Unknown field.":
            problem = unknown_problem(str(path[-1]), _config_keys(path[2:-1]))
        more = len(err.errors or []) - 1
        return dotted(path), problem + (f" (and {more} more problems)" if more else "")
    return dotted(("configs", config_id)), err.message


def _config_keys(parent: Sequence[str | int]) -> tuple[str, ...]:
    """Return the keys a config node at path `parent` may hold (the config schema's fields)."""
    from app.config import schema

    nested = {"retry": schema.RetrySchema, "cache": schema.CacheSchema, "strategy": schema.StrategySchema}
    node: type = schema.TargetSchema
    if len(parent) >= 2 and parent[-2] == "conditions":
        node = schema.ConditionSchema
    elif parent and str(parent[-1]) in nested:
        node = nested[str(parent[-1])]
    return tuple(node().fields)


def _config_custom_hosts(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Yield (path, custom_host) for every node of a parsed config that names a custom host."""
    if node.custom_host:
        yield path, node.custom_host
    for index, child in enumerate(node.targets or ()):
        yield from _config_custom_hosts(child, (*path, "targets", index))
