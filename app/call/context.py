"""RequestContext: what one gateway call knows as it moves through the stages."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from app.config.models import Target as ConfigTarget
from app.http.body import Body
from app.providers.registry import Provider
from app.usage.model import UsageSource

_UNSET: Any = object()
PROXY = "proxy"
UNIFIED = "unified"


@dataclass(frozen=True)
class ResolvedTarget:
    """Where one attempt goes: the provider, its credential and options, and an optional custom host."""

    provider: Provider
    credential: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    custom_host: str | None = None
    catalog_name: str | None = None

    def __repr__(self) -> str:
        return f"ResolvedTarget(provider={self.provider.slug!r}, catalog={self.catalog_name!r}, credential=<redacted>)"


@dataclass
class RequestContext:
    """One gateway call: request facts in, routing decisions and upstream facts filled in by stages."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    route: str
    endpoint: str | None = None
    unified_format: str | None = None
    trace_id: str = ""
    # Who called: the peer, or the client a trusted proxy reported (docs/observability.md, Client address).
    client_ip: str | None = None
    started: float = field(default_factory=time.perf_counter)
    key_name: str | None = None
    # The key's governance for this call (app.governance.gate.Grant), None on an open gateway.
    grant: Any = None
    # Provider-key headers that carried a gateway key: never forwarded, never taken as the provider's credential.
    key_headers: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int | None = None
    forward: tuple[str, ...] = ()
    target: ResolvedTarget | None = None
    config: ConfigTarget | None = None
    # Who holds the config when the gateway does (e.g. "saved config 'pc-prod'"); None when the client sent it.
    # Credentials and hosts in a held config are the operator's; a client's never mix with them (docs/security.md).
    held_config: str | None = None
    body: Body | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    retry_count: int = 0  # the answering target's retries, -1 when they ran out (x-portkey-retry-attempt-count)
    retries_made: int = 0  # every retry of the call, on every target tried (the request log and metrics)
    option_index: str | None = None
    bytes_out: int = 0
    error: str | None = None
    cache_status: str = "DISABLED"
    upstream_sent: float | None = None
    fell_back: bool = False
    usage: UsageSource | None = None  # the answer's usage: the byte tap, or a translator's report (set as it starts)
    hook_results: dict[str, Any] = field(default_factory=dict)
    _body_json: Any = field(default=_UNSET, repr=False)

    @property
    def rest(self) -> str:
        """Return the path sent after the base URL: without `/v1/proxy` (legacy) or else `/v1`."""
        if self.path.startswith("/v1/proxy/") or self.path == "/v1/proxy":
            return self.path[len("/v1/proxy"):]
        return self.path[len("/v1"):]

    @cached_property
    def header_items(self) -> list[tuple[str, str]]:
        """Return the request headers in order, repeats kept (read only by the proxy and hooks, so only then)."""
        return list(self.headers.items())

    def body_json(self) -> Any:
        """Return the request body parsed as JSON (once), or None when it is not a JSON body."""
        if self._body_json is _UNSET:
            self._body_json = None
            media = (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
            if self.body is not None and self.body.size and (media == "application/json" or media.endswith("+json")):
                try:
                    self._body_json = json.loads(self.body.bytes())
                except (ValueError, RecursionError):
                    self._body_json = None
        return self._body_json

    def condition_context(self) -> dict[str, Any]:
        """Return what conditional routing queries: metadata, params (the JSON body) and url."""
        params = self.body_json()
        return {"metadata": self.metadata, "params": params if isinstance(params, dict) else {},
                "url": {"pathname": self.path}}

    @property
    def provider_slug(self) -> str | None:
        """Return the slug of the target's provider, once resolved."""
        return self.target.provider.slug if self.target else None
