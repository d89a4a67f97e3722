"""The state store's contract (docs/governance.md, State store): keys, rate windows, in-flight slots, spend.

Two stores keep it: SQLite (one file in WAL mode, shared by the workers of a host; sqlite_store.py) and Redis
(shared by hosts; redis_store.py). Every method is atomic across processes and hosts: with `rpm = 100`, 400
calls admitted at once through every worker admit exactly 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.governance.keys import KeyRecord, Limits

WINDOW_S = 60.0  # rpm and tpm count the last minute
# A slot of a call that never said it ended (its worker died) stops counting against max_concurrent after this.
SLOT_LEASE_S = 900.0


class StateUnavailable(Exception):
    """The state store cannot be reached or read; the message says which store and why (never a password)."""


@dataclass(frozen=True)
class Reservation:
    """The answer of `reserve`: whether the amount was reserved, and the period's spend and reservations."""

    reserved: bool
    spent_usd: float = 0.0
    reserved_usd: float = 0.0  # every reservation held in the period, this one included when reserved


@dataclass(frozen=True)
class BudgetAsk:
    """A reservation asked for with an admission: `usd` of the period's budget of `budget_usd`."""

    period: str
    usd: float
    budget_usd: float


@dataclass(frozen=True)
class Admission:
    """The answer of `admit`: admitted or not, which limit refused and when to retry, and the window's use."""

    admitted: bool
    limit: str | None = None  # "rpm", "tpm", "max_concurrent" or "budget" when refused
    retry_after_s: int = 0  # whole seconds, at least 1 when refused by a rate limit (0 for "budget")
    requests: int = 0  # requests in the last 60 s, this one included when admitted
    tokens: int = 0  # tokens used in the last 60 s
    reservation: Reservation | None = None  # the budget's answer, when a BudgetAsk came with the call


@dataclass(frozen=True)
class Finished:
    """One finished call of a key, as `finish` records it."""

    key_id: str
    at: float  # epoch seconds the call ended
    counted: bool = False  # admit counted its request already; otherwise finish counts it
    slot: str | None = None  # the in-flight slot admit took, to free
    tokens: int = 0  # tokens the call used, counted in the tpm window at `at`
    period: str | None = None  # the budget period its reservation and cost go to (Budget.period_of)
    reserved_usd: float = 0.0  # the reservation to release
    cost_usd: float = 0.0  # the call's real cost, added to the period's spend


@dataclass(frozen=True)
class KeyUsage:
    """What a key used: spend in a period, requests and tokens in the last 60 s, calls in flight."""

    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    requests: int = 0
    tokens: int = 0
    in_flight: int = 0


class StateStore(Protocol):
    """Keys and counters shared by every worker (and host) using the same store."""

    def put_key(self, record: KeyRecord) -> None:
        """Insert or replace a managed key (by id), and move the version on."""

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Return a managed key by id, or None."""

    def list_keys(self) -> list[KeyRecord]:
        """Return every managed key, oldest first."""

    def version(self) -> int:
        """Return a number that changes whenever a key is put: workers re-read the keys when it does."""

    def admit(self, key_id: str, slot: str, now: float, limits: Limits, budget: BudgetAsk | None = None) -> Admission:
        """Admit one call under `limits` (and reserve from its budget), or refuse it naming the limit; atomically.

        Refused when: rpm is set and `rpm` requests were admitted after now-60 (entries stamped a little later than
        `now`, by racing calls, count too); tpm is set and the tokens finished in that window reach `tpm`;
        max_concurrent is set and that many slots are held (not older than SLOT_LEASE_S). Admitted: the request
        is counted at `now` and, when max_concurrent is set, `slot` is held.
        retry_after_s: when the oldest counted request (or token entry) leaves the window; 1 for max_concurrent.
        A store may keep the window in whole seconds: an entry may then count up to 1 s past its 60 s, never less.
        With `budget`: once the limits pass, refused (limit "budget", nothing counted, no slot) when the period's
        spent + reserved reach budget.budget_usd; else budget.usd is reserved as `reserve` would, in the same step.
        `reservation` reports it either way. One transaction (one script) for all of it: this is the request path.
        """

    def reserve(self, key_id: str, period: str, usd: float, budget_usd: float) -> Reservation:
        """Reserve `usd` of the period's budget unless spent + reserved already reach `budget_usd`; atomically."""

    def finish(self, calls: Sequence[Finished]) -> None:
        """Record finished calls in one go: count requests not counted yet, add tokens to the window, free slots,
        release reservations (never below 0) and add costs to the period's spend."""

    def usage(self, key_id: str, now: float, period: str | None) -> KeyUsage:
        """Return a key's use: spend and reservations in `period` (None: 0), requests, tokens and slots now."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
