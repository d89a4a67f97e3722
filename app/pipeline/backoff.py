"""How long to wait before the next retry (docs/configs.md, Retries): jittered exponential backoff or Retry-After."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime

from app.config.models import RetryPolicy

MAX_RETRY_WAIT_S = 60.0  # budget: a single wait over this, or waits beyond it in total, stop retrying
RETRY_AFTER_STATUSES = (429, 503)
# Checked in this order; the first present and valid one wins. Values are (header, seconds per unit).
_RETRY_AFTER_MS_HEADERS = (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001))
# Plain non-negative decimals only: float() would also take "nan", "inf", "-1", "1e3" and "1_0".
_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
# 2**60 times any sane base is far past any cap; bounding the exponent avoids float overflow.
_MAX_EXPONENT = 60

_rng = random.Random()


def backoff_delay(retry_number: int, base_ms: int, rng: random.Random | None = None, cap_s: float = 30.0) -> float:
    """Return the seconds to wait before retry `retry_number` (1-based).

    The ceiling is base * 2**(n-1), capped at `cap_s`. We use "equal jitter": half the
    ceiling is fixed and the other half random, so the wait lies in [ceiling/2, ceiling].
    Full jitter spreads load slightly better but can draw a near-zero wait, which makes a
    retry against an upstream that just said "slow down" nearly pointless.
    """
    if retry_number < 1:
        raise ValueError(f"retry_number is 1-based, got {retry_number}")
    if base_ms <= 0 or cap_s <= 0:
        return 0.0
    exponent = min(retry_number - 1, _MAX_EXPONENT)
    ceiling = min(cap_s, base_ms / 1000.0 * 2.0**exponent)
    half = ceiling / 2.0
    return half + (rng or _rng).random() * half


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Return the wait the upstream asked for, in seconds, or None when it asked for none usable."""
    lowered = _lowercase(headers)
    for name, unit in _RETRY_AFTER_MS_HEADERS:
        seconds = _decimal(lowered.get(name))
        if seconds is not None:
            return seconds * unit
    value = lowered.get("retry-after")
    seconds = _decimal(value)
    if seconds is not None:
        return seconds
    return _seconds_until_http_date(value, time.time() if now is None else now)


def next_wait(policy: RetryPolicy, status: int | None, headers: Mapping[str, str] | None, retry_number: int,
              base_ms: int, elapsed_s: float, rng: random.Random | None = None,
              now: float | None = None) -> float | None:
    """Return the seconds to wait before the next retry, or None to stop retrying now.

    `elapsed_s` is what has already been spent against the MAX_RETRY_WAIT_S budget.
    """
    remaining = MAX_RETRY_WAIT_S - elapsed_s
    if policy.use_retry_after_header and status in RETRY_AFTER_STATUSES and headers:
        asked = retry_after_seconds(headers, now)
        if asked is not None:
            # Honour the upstream exactly or not at all: retrying sooner would just be refused again.
            return None if asked > MAX_RETRY_WAIT_S or asked > remaining else asked
    delay = backoff_delay(retry_number, base_ms, rng)
    return None if delay > remaining else delay


@dataclass(frozen=True)
class Retry:
    """A leaf's retry state as a value, in urllib3's manner: a new one per retry, never changed in place.

    `count` is the retries made so far; `exhausted` says the last answer was still retryable when no
    attempt (or none of the 60 s budget) was left. What a client is told (x-portkey-retry-attempt-count,
    -1 once retries ran out) is computed from the two (`reported`), not carried through the loop.
    """

    policy: RetryPolicy
    base_ms: int
    started: float
    count: int = 0
    exhausted: bool = False

    def wants(self, status: int) -> bool:
        """Tell whether an answer with this status is one to retry (transport failures always are)."""
        return status in self.policy.on_status_codes

    def wait(self, status: int | None, headers: Mapping[str, str] | None, now: float) -> float | None:
        """Return the seconds to wait before the next retry, or None when no retry is left."""
        if self.count >= self.policy.attempts:
            return None
        return next_wait(self.policy, status, headers, self.count + 1, self.base_ms, now - self.started)

    def increment(self) -> Retry:
        """Return the state after one more retry."""
        return replace(self, count=self.count + 1)

    def give_up(self) -> Retry:
        """Return the state of a leaf whose last answer was retryable but got no retry."""
        return replace(self, exhausted=True)

    @property
    def reported(self) -> int:
        """Return the answering target's retry count as clients see it: -1 once configured retries ran out."""
        if self.exhausted:
            return -1 if self.policy.attempts else 0
        return self.count


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the headers keyed by lowercase name; works for plain dicts and CaseInsensitiveDict alike."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str):
            lowered.setdefault(name.lower(), value)
    return lowered


def _decimal(value: str | None) -> float | None:
    """Return a non-negative finite decimal header value, or None when it is absent or not one."""
    if value is None:
        return None
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _seconds_until_http_date(value: str | None, now: float) -> float | None:
    """Return the seconds from `now` until an HTTP-date, clamped at 0, or None when it is not one."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" yields a naive datetime; HTTP-dates are always GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
