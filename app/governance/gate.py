"""Enforcement (docs/governance.md): who calls (by key), which models, how fast, for how much.

`identify` runs first in Gateway.run: the key, from x-portkey-api-key or a single-token header. The rest is the
`govern` leaf stage (`check_target`), since the model and its price depend on where a target sends the call:
the allow-list, then, at the first target, the admission (rpm, tpm, max_concurrent and the budget's
reservation, one step of the store), and at a fallback target the reservation of what it adds. Every governed
call ends in `Grant.finish`, which frees its slot, releases its reservation and adds its real tokens and cost.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from app.call.context import RequestContext, ResolvedTarget
from app.call.record import CallRecord
from app.errors import Refused, StateStoreUnavailable, Unauthorized
from app.governance import allow
from app.governance.index import KeyIndex
from app.governance.keys import STATIC_PREFIX, KeyRecord, Secret, hash_secret
from app.governance.store import Admission, BudgetAsk, Finished, Reservation, StateStore, StateUnavailable
from app.governance.tally import Tally
from app.usage import PricingTable, Usage

log = logging.getLogger(__name__)
T = TypeVar("T")
# Single-token clients (the openai SDK, Claude Code-style tools) send the gateway key where a provider key goes.
TOKEN_HEADERS = ("authorization", "x-api-key")
# Output tokens reserved when a call sets no max_tokens: reservations bound overspend, so they need a size.
DEFAULT_OUTPUT_RESERVE = 1024
RATELIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                     "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")


def static_records(keys: Iterable[Any]) -> list[KeyRecord]:
    """Return the gateway file's keys (settings.GatewayKey: name, sha256, fields) as key records (`static:<name>`)."""
    return [KeyRecord(id=STATIC_PREFIX + key.name, name=key.name, created_at=0.0,
                      secrets=(Secret(key.sha256),), **key.fields) for key in keys]


@dataclass
class Grant:
    """One call's key and what governance holds for it: a slot, a reservation, the rate-limit headers."""

    key: KeyRecord
    tally: Tally
    slot: str | None = None
    admitted: bool = False  # the first target admitted the call (limits counted, budget reserved)
    counted: bool = False
    period: str | None = None
    reserved_usd: float = 0.0
    headers: list[tuple[str, str]] = field(default_factory=list)

    def finish(self, record: CallRecord) -> None:
        """Free the slot, release the reservation, add the call's tokens and cost (when its answer ended)."""
        tokens = (record.input_tokens or 0) + (record.output_tokens or 0)
        # A governed key's requests are counted by admit alone: one refused before admission (a 403, a 429)
        # must not use up the minute. Other keys' calls are counted here, for their usage.
        counted = self.counted or self.key.governed
        self.tally.add(Finished(key_id=self.key.id, at=record.ended_at, counted=counted, slot=self.slot,
                                tokens=tokens, period=self.period, reserved_usd=self.reserved_usd,
                                cost_usd=record.cost_usd or 0.0), urgent=self.key.governed)


class Governance:
    """The keys of a gateway and the state store their limits and budgets are kept in."""

    def __init__(self, static_keys: Iterable[Any], pricing: PricingTable, store: StateStore) -> None:
        self.pricing = pricing
        self.store = store
        self.index = KeyIndex(static_records(static_keys), self.store)
        self.tally = Tally(self.store)
        self._slots = itertools.count()
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        """Write what is still tallied and close the store."""
        self.tally.close()
        self.store.close()

    def identify(self, ctx: RequestContext) -> None:
        """Find the call's key (x-portkey-api-key, else a single-token header holding a gateway key), or 401."""
        now = time.time()
        record, header = None, None
        presented = ctx.headers.get("x-portkey-api-key")
        if presented:
            record = self.index.find(hash_secret(presented), now)
            if record is None:
                raise Unauthorized("Invalid x-portkey-api-key: no gateway key matches")
        for name in TOKEN_HEADERS:
            token = _token(ctx.headers.get(name))
            found = self.index.find(hash_secret(token), now, recheck=record is None) if token else None
            if found is not None:
                # A gateway key in a provider-key header is never forwarded, whichever key the call uses.
                ctx.key_headers += (name,)
                record = record or found
                header = header or name
        if record is None:
            self._open_or_refuse(ctx)
            return
        refusal = record.refusal(now)
        if refusal is not None:
            raise Unauthorized(f"The gateway key {record.name!r} is {refusal}")
        ctx.key_name = record.name
        ctx.grant = Grant(record, self.tally, headers=limit_headers(record))

    def _open_or_refuse(self, ctx: RequestContext) -> None:
        """Let a keyless call through on an open gateway (loopback, no keys at all), else refuse it (401)."""
        if self.index.has_keys:
            raise Unauthorized("Missing x-portkey-api-key header: this gateway requires a gateway key")
        if "forwarded" in ctx.headers or "x-forwarded-for" in ctx.headers:
            # Behind a reverse proxy every caller arrives from the proxy's loopback address: open mode's
            # "only local clients" would admit the whole network (docs/observability.md, Client address).
            raise Unauthorized("This gateway has no keys and the call came through a proxy (Forwarded or "
                               "X-Forwarded-For): gateway keys are needed behind a proxy; add [[keys]] to the "
                               "gateway file")

    def check_target(self, ctx: RequestContext, target: ResolvedTarget, body: object) -> None:
        """Refuse a target its key may not use (403); admit the call under its limits and budget (429).

        The first target a call reaches admits it: rpm, tpm, max_concurrent and the budget's reservation in one
        step of the store. A later target (a fallback) only reserves what its estimate adds.
        """
        grant = ctx.grant
        if grant is None:
            return
        key = grant.key
        model = _model_of(body)
        if not allow.allowed(key.models, target.provider.slug, target.catalog_name, model):
            shown = f"{target.provider.slug}/{model}" if model else f"{target.provider.slug} (no model named)"
            raise Refused(403, "model_not_allowed",
                          f"Model {shown[:200]!r} is not allowed for key {key.name!r}; its allow-list: "
                          f"{', '.join(key.models)[:500]}")
        if not key.governed:
            return
        ask = self._budget_ask(ctx, grant, target, model, body)
        if grant.admitted:
            if ask is not None and ask.usd > 0:
                self._reserve_more(ctx, grant, ask)
            return
        self._admit(ctx, grant, ask)

    def _budget_ask(self, ctx: RequestContext, grant: Grant, target: ResolvedTarget, model: str | None,
                    body: object) -> BudgetAsk | None:
        """Return what this target asks of the key's budget: its estimate beyond what the call holds already."""
        budget = grant.key.budget
        if budget is None:
            return None
        estimate = self.estimate(target, model, body, ctx.body.size if ctx.body is not None else 0)
        grant.period = grant.period or budget.period_of(time.time())
        return BudgetAsk(grant.period, max(0.0, estimate - grant.reserved_usd), budget.usd)

    def _admit(self, ctx: RequestContext, grant: Grant, ask: BudgetAsk | None) -> None:
        """Count the call against its key's limits and reserve from its budget, or refuse it (429)."""
        key = grant.key
        slot = f"{self._host}:{next(self._slots)}"
        admission = self._store_step(ctx, lambda: self.store.admit(key.id, slot, time.time(), key.limits, ask))
        if key.limits:
            grant.headers = ratelimit_headers(key, admission)
        if not admission.admitted:
            if admission.limit == "budget":
                self._refuse_budget(grant, admission.reservation)
            limit = admission.limit or "rpm"
            raise Refused(429, "rate_limit_exceeded",
                          f"Rate limit exceeded for key {key.name!r}: {limit} = {getattr(key.limits, limit)} "
                          f"({_LIMIT_WORDS[limit]}); retry after {admission.retry_after_s} s",
                          headers={"Retry-After": str(admission.retry_after_s), **dict(grant.headers)})
        grant.admitted = True
        grant.counted = True  # admit counted the request, for a budget-only key too
        grant.slot = slot if key.limits.max_concurrent is not None else None
        if ask is not None:
            grant.reserved_usd += ask.usd

    def _reserve_more(self, ctx: RequestContext, grant: Grant, ask: BudgetAsk) -> None:
        """Reserve what a fallback target adds to the call's estimate, or refuse it (429 budget_exceeded)."""
        reservation = self._store_step(ctx, lambda: self.store.reserve(grant.key.id, ask.period, ask.usd,
                                                                       ask.budget_usd))
        if not reservation.reserved:
            self._refuse_budget(grant, reservation)
        grant.reserved_usd += ask.usd

    def _refuse_budget(self, grant: Grant, reservation: Reservation | None) -> NoReturn:
        """Refuse the call: its key's budget for the period is spent or reserved."""
        budget = grant.key.budget
        assert budget is not None
        spent = reservation.spent_usd if reservation is not None else 0.0
        held = reservation.reserved_usd if reservation is not None else 0.0
        raise Refused(429, "budget_exceeded",
                      f"Budget exceeded for key {grant.key.name!r}: {budget.usd:g} USD per {budget.period}; "
                      f"spent {spent:.6f}, reserved {held:.6f}", headers=dict(grant.headers))

    def _store_step(self, ctx: RequestContext, step: Callable[[], T]) -> T:
        """Run one step of the state store for a governed call; a store that is away refuses the call (503)."""
        try:
            return step()
        except StateUnavailable as err:
            log.error("trace_id=%s state store unavailable, refusing a governed key's call: %s", ctx.trace_id, err)
            raise StateStoreUnavailable("The gateway's state store is unavailable; calls with limited or budgeted "
                                        "keys are refused until it is back") from None

    def estimate(self, target: ResolvedTarget, model: str | None, body: object, body_bytes: int) -> float:
        """Return what a call may cost: its input (about 4 bytes a token) plus its max_tokens, at the model's price."""
        if not model:
            return 0.0
        output = _max_tokens(body)
        usage = Usage(model=model, input_tokens=math.ceil(body_bytes / 4),
                      output_tokens=DEFAULT_OUTPUT_RESERVE if output is None else output)
        cost = self.pricing.cost(target.provider.slug, usage)
        return cost.usd or 0.0


_LIMIT_WORDS = {"rpm": "requests per minute", "tpm": "tokens per minute", "max_concurrent": "calls in flight"}


def limit_headers(key: KeyRecord) -> list[tuple[str, str]]:
    """Return the x-ratelimit-limit-* headers of a limited key, for answers given before its admission."""
    headers = []
    if key.limits.rpm is not None:
        headers.append(("x-ratelimit-limit-requests", str(key.limits.rpm)))
    if key.limits.tpm is not None:
        headers.append(("x-ratelimit-limit-tokens", str(key.limits.tpm)))
    return headers


def ratelimit_headers(key: KeyRecord, admission: Admission) -> list[tuple[str, str]]:
    """Return OpenAI's x-ratelimit-* headers for a limited key, after its admission (docs/governance.md)."""
    headers = []
    if key.limits.rpm is not None:
        headers += [("x-ratelimit-limit-requests", str(key.limits.rpm)),
                    ("x-ratelimit-remaining-requests", str(max(0, key.limits.rpm - admission.requests)))]
    if key.limits.tpm is not None:
        headers += [("x-ratelimit-limit-tokens", str(key.limits.tpm)),
                    ("x-ratelimit-remaining-tokens", str(max(0, key.limits.tpm - admission.tokens)))]
    return headers


def _token(value: str | None) -> str | None:
    """Return the token of an Authorization (Bearer or bare) or x-api-key value."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else value.strip()


def _model_of(body: object) -> str | None:
    """Return the model a JSON body names."""
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else None


def _max_tokens(body: object) -> int | None:
    """Return the output limit a body sets (max_tokens, max_completion_tokens, max_output_tokens)."""
    if not isinstance(body, dict):
        return None
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
