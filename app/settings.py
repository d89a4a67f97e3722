"""Settings: the only reader of os.environ and the gateway file (TOML)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from app.http.headers import proxy_drop_set
from app.providers.registry import PROVIDERS, option_problem

DEFAULT_BIND = "127.0.0.1:8787"
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_SPOOL_MEMORY_BYTES = 1024 * 1024
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_LOGS_PATH = "portico-logs.sqlite"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Catalog fields that name how to reach a provider (SPEC 4.2); api_key is the credential.
CATALOG_FIELDS = (
    "provider", "api_key", "custom_host", "resource_name", "deployment_id", "api_version",
    "aws_region", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "vertex_project_id", "vertex_region", "openai_organization", "openai_project",
    "anthropic_version", "anthropic_beta",
)


class SettingsError(Exception):
    """The gateway file or environment is unusable; the message is one line naming the key."""


@dataclass(frozen=True)
class GatewayKey:
    """A gateway key: its name (for logs) and the SHA-256 of its value."""

    name: str
    sha256: str


@dataclass(frozen=True)
class CatalogEntry:
    """A Model Catalog entry (`@name`): a provider slug plus its credential and options."""

    name: str
    provider: str
    api_key: str | None = None
    custom_host: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

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
    return Settings(
        bind=env.get("GATEWAY_BIND") or DEFAULT_BIND,
        workers=reader.env_int("GATEWAY_WORKERS", default_workers()),
        threads=reader.env_int("GATEWAY_THREADS", 32),
        log_level=reader.log_level(env.get("GATEWAY_LOG_LEVEL", "info")),
        header_timeout_s=reader.env_int("GATEWAY_HEADER_TIMEOUT", 10),
        body_timeout_s=reader.env_int("GATEWAY_BODY_TIMEOUT", 60),
        graceful_timeout_s=reader.env_int("GATEWAY_GRACEFUL_TIMEOUT", 30),
        source=source,
        keys=reader.keys(data.get("keys", [])),
        custom_hosts_allow=tuple(reader.str_list(data.get("custom_hosts", {}), "custom_hosts", "allow")),
        catalog=reader.catalog(data.get("catalog", {})),
        configs=reader.configs(data.get("configs", {})),
        max_body_bytes=reader.int_in(data.get("limits", {}), "limits", "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        spool_memory_bytes=reader.int_in(data.get("limits", {}), "limits", "spool_memory_bytes",
                                         DEFAULT_SPOOL_MEMORY_BYTES),
        backoff_base_ms=reader.int_in(data.get("retry", {}), "retry", "backoff_base_ms", 1000),
        trust_env=reader.bool_in(data.get("upstream", {}), "upstream", "trust_env", False),
        ignore_headers=frozenset(reader.str_list(data.get("proxy", {}), "proxy", "ignore_headers")),
        connect_timeout_s=reader.int_in(data.get("upstream", {}), "upstream", "connect_timeout_ms", 10_000) / 1000,
        read_timeout_s=reader.int_in(data.get("upstream", {}), "upstream", "read_timeout_ms", 600_000) / 1000,
        access_log=reader.bool_in(data.get("logs", {}), "logs", "access_log", True),
        logs_path=reader.logs_path(data.get("logs", {})),
        metrics_enabled=reader.bool_in(data.get("metrics", {}), "metrics", "enabled", True),
        logs_retention_days=reader.int_in(data.get("logs", {}), "logs", "retention_days", 30),
        admin_key_sha256=reader.admin_key(data.get("admin", {})),
        pricing=reader.pricing(data.get("pricing", {})),
        cache_backend=reader.cache_backend(data.get("cache", {})),
        cache_max_bytes=reader.int_in(data.get("cache", {}), "cache", "max_bytes", DEFAULT_CACHE_MAX_BYTES),
        cache_max_entry_bytes=reader.int_in(data.get("cache", {}), "cache", "max_entry_bytes",
                                            reader.int_in(data.get("cache", {}), "cache", "max_bytes",
                                                          DEFAULT_CACHE_MAX_BYTES) // 8),
    )


def check_start(settings: Settings, bound: Sequence[str] | None = None) -> str | None:
    """Refuse an open gateway off loopback; return the warning line for an open one on loopback.

    bound: the addresses gunicorn really listens on (GUNICORN_CMD_ARGS may differ from GATEWAY_BIND).
    """
    if not settings.open_mode:
        return None
    addresses = list(bound) if bound else [settings.bind]
    public = [address for address in addresses if not bind_is_loopback(address)]
    if public:
        raise SettingsError(
            f"refusing to start: no gateway keys are configured ({settings.source}) and the bind address "
            f"{', '.join(public)} is not loopback; add [[keys]] to the gateway file or bind to 127.0.0.1")
    return (f"no gateway keys configured ({settings.source}): running OPEN, "
            f"any local client may call on {', '.join(addresses)}")


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

    def str_list(self, section: Any, name: str, key: str) -> list[str]:
        raw = self.table(section, name).get(key, [])
        if not isinstance(raw, list):
            raise self.fail(f"{name}.{key}", "must be a list of strings")
        return [self.string(item, f"{name}.{key}[{i}]") for i, item in enumerate(raw)]

    def int_in(self, section: Any, name: str, key: str, default: int) -> int:
        raw = self.value(self.table(section, name).get(key, default), f"{name}.{key}")
        try:
            val = int(raw)
        except (TypeError, ValueError):
            raise self.fail(f"{name}.{key}", f"must be an integer, got {raw!r}") from None
        if val < 0 or isinstance(raw, bool):
            raise self.fail(f"{name}.{key}", "must be a non-negative integer")
        return val

    def logs_path(self, section: Any) -> str | None:
        """Return the request-log file; "" turns the log store off."""
        raw = self.value(self.table(section, "logs").get("path", DEFAULT_LOGS_PATH), "logs.path")
        if not isinstance(raw, str):
            raise self.fail("logs.path", "must be a file path, or \"\" to keep no request log")
        return raw or None

    def admin_key(self, section: Any) -> str | None:
        """Return the SHA-256 of the admin key (kept hashed, like gateway keys)."""
        raw = self.table(section, "admin").get("key")
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
        raw = self.string(self.table(section, "cache").get("backend", "memory"), "cache.backend")
        if raw != "memory" and not raw.startswith(("redis://", "rediss://", "unix://")):
            raise self.fail("cache.backend", f"must be \"memory\" or a redis:// URL, got {raw.split('://')[0]!r}")
        return raw

    def bool_in(self, section: Any, name: str, key: str, default: bool) -> bool:
        raw = self.value(self.table(section, name).get(key, default), f"{name}.{key}")
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
            keys.append(GatewayKey(name=name, sha256=digest))
        return tuple(keys)

    def configs(self, raw: Any) -> dict[str, Any]:
        """Validate saved configs now, so a bad one stops start-up instead of failing calls."""
        from app.config.schema import parse_config
        from app.errors import GatewayError

        parsed: dict[str, Any] = {}
        for config_id, config in self.table(raw, "configs").items():
            try:
                parsed[config_id] = parse_config(self.table(config, f"configs.{config_id}"))
            except GatewayError as err:
                detail = "; ".join(err.errors or []) or err.message
                raise self.fail(f"configs.{config_id}", detail) from None
        return parsed

    def catalog(self, raw: Any) -> dict[str, CatalogEntry]:
        entries: dict[str, CatalogEntry] = {}
        for name, item in self.table(raw, "catalog").items():
            where = f"catalog.{name}"
            item = self.table(item, where)
            unknown = sorted(set(item) - set(CATALOG_FIELDS))
            if unknown:
                raise self.fail(where, f"unknown field {unknown[0]!r}")
            values = {k: self.string(v, f"{where}.{k}") for k, v in item.items()}
            if "provider" not in values:
                raise self.fail(where, "provider is required")
            if values["provider"] not in PROVIDERS:
                raise self.fail(f"{where}.provider", f"unknown provider {values['provider']!r}")
            for key, value in values.items():
                problem = option_problem(key, value)  # a value that goes into an upstream URL (docs/security.md)
                if problem:
                    raise self.fail(f"{where}.{key}", problem)
            options = {k: v for k, v in values.items() if k not in ("provider", "api_key", "custom_host")}
            entries[name] = CatalogEntry(name=name, provider=values["provider"], api_key=values.get("api_key"),
                                         custom_host=values.get("custom_host"), options=options)
        return entries
