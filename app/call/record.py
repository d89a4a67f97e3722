"""CallRecord: one finished gateway call, built once when it ends and handed to every sink (docs/observability.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.call.context import RequestContext
from app.redact import MASK, NO_SECRETS, Secrets, redact_query
from app.usage.model import Usage
from app.usage.pricing import Cost

# Masked metadata deeper than this is cut: the header is parsed with no depth limit.
MAX_MASKED_DEPTH = 8


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the access line, the request log and the metrics know of one call: facts only, never bodies.

    Text that could quote a credential (trace id, path, query, model, error, metadata) is already masked
    with the call's secrets (docs/security.md), so a sink writes it as it is.
    """

    route: str
    status: int
    trace_id: str = ""
    method: str = ""
    path: str = ""
    query: str | None = None  # secret-named parameters redacted; None when the call had no query
    client_ip: str | None = None
    key_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    provider: str | None = None
    option_index: str | None = None  # the config target that answered (x-portkey-last-used-option-index)
    upstream_status: int | None = None
    error: str | None = None
    ended_at: float = 0.0  # wall-clock time (time.time()) the call ended
    latency_s: float = 0.0  # from the request's arrival to the end of the answer
    upstream_ms: float | None = None  # the answering attempt, from sending it to its response head
    upstream_s: float | None = None  # from sending the first attempt to the end of the answer
    retries: int = 0  # every retry, on every target tried
    fell_back: bool = False
    cache_status: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    model: str | None = None  # the model the answer (or else the request) named
    priced_as: str | None = None  # its price-table name (`provider/model`), None when unpriced
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    search_units: int | None = None
    cost_usd: float | None = None
    unknown_price: bool = False

    @classmethod
    def of(cls, ctx: RequestContext, status: int, usage: Usage, cost: Cost, secrets: Secrets = NO_SECRETS,
           now: float | None = None) -> CallRecord:
        """Return the record of a call that ended with `status` at `now` (time.perf_counter), masked with `secrets`."""
        now = time.perf_counter() if now is None else now
        return cls(
            route=ctx.route, status=status, trace_id=secrets.mask(ctx.trace_id), method=ctx.method,
            path=secrets.scrub(ctx.path), query=redact_query(secrets.mask(ctx.query)) if ctx.query else None,
            client_ip=ctx.client_ip, key_name=ctx.key_name, metadata=masked_metadata(ctx.metadata, secrets),
            provider=ctx.provider_slug, option_index=ctx.option_index, upstream_status=ctx.upstream_status,
            error=secrets.scrub(ctx.error) if ctx.error else None, ended_at=time.time(), latency_s=now - ctx.started,
            upstream_ms=ctx.upstream_ms, upstream_s=now - ctx.upstream_sent if ctx.upstream_sent is not None else None,
            retries=ctx.retries_made, fell_back=ctx.fell_back, cache_status=ctx.cache_status,
            bytes_in=ctx.body.size if ctx.body is not None else 0, bytes_out=ctx.bytes_out,
            model=secrets.mask(usage.model) if usage.model is not None else None, priced_as=cost.priced_as,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
            search_units=usage.search_units, cost_usd=cost.usd, unknown_price=cost.unknown_model)

    @property
    def tokens(self) -> dict[str, int]:
        """Return the token counts the answer reported, by kind (input, output, cache_read, cache_write)."""
        kinds = {"input": self.input_tokens, "output": self.output_tokens,
                 "cache_read": self.cache_read_tokens, "cache_write": self.cache_write_tokens}
        return {kind: count for kind, count in kinds.items() if count}


class Sink(Protocol):
    """Somewhere finished calls go (the access line, the request log, the metrics); see docs/architecture.md."""

    def write(self, record: CallRecord) -> None:
        """Take one finished call; the observer logs a sink that raises and goes on to the next one."""


def masked_metadata(metadata: Any, secrets: Secrets) -> dict[str, Any]:
    """Return the call's metadata tags; a tag quoting a credential of the call has it masked (rare: checked whole)."""
    if not isinstance(metadata, dict) or not metadata:
        return {}
    if not secrets:
        return metadata
    text = json.dumps(metadata, ensure_ascii=False, default=str)
    if secrets.mask(text) == text:
        return metadata
    return {secrets.mask(str(name)): _masked(value, secrets, 0) for name, value in metadata.items()}


def _masked(value: Any, secrets: Secrets, depth: int) -> Any:
    if isinstance(value, str):
        return secrets.mask(value)
    if depth >= MAX_MASKED_DEPTH:
        return MASK
    if isinstance(value, dict):
        return {secrets.mask(str(k)): _masked(v, secrets, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, secrets, depth + 1) for v in value]
    return value
