"""RequestContext: what one gateway call knows as it moves through the stages."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.http.body import Body
from app.providers.registry import Provider

PROXY = "proxy"
UNIFIED = "unified"


@dataclass(frozen=True)
class Target:
    """Where one attempt goes: the provider, its credential and options, and an optional custom host."""

    provider: Provider
    credential: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    custom_host: str | None = None
    catalog_name: str | None = None

    def __repr__(self) -> str:
        return f"Target(provider={self.provider.slug!r}, catalog={self.catalog_name!r}, credential=<redacted>)"


@dataclass
class RequestContext:
    """One gateway call: request facts in, routing decisions and upstream facts filled in by stages."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    header_items: list[tuple[str, str]]
    route: str
    endpoint: str | None = None
    unified_format: str | None = None
    trace_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    key_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int | None = None
    forward: tuple[str, ...] = ()
    target: Target | None = None
    body: Body | None = None
    upstream_url: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    retry_count: int = 0
    option_index: str | None = None
    bytes_out: int = 0
    error: str | None = None

    @property
    def rest(self) -> str:
        """Return the path sent after the base URL: without `/v1/proxy` (legacy) or else `/v1`."""
        if self.path.startswith("/v1/proxy/") or self.path == "/v1/proxy":
            return self.path[len("/v1/proxy"):]
        return self.path[len("/v1"):]

    @property
    def provider_slug(self) -> str | None:
        """Return the slug of the target's provider, once resolved."""
        return self.target.provider.slug if self.target else None
