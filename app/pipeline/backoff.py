"""How long to wait before the next retry (docs/configs.md, Retries): jittered exponential backoff or Retry-After."""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Mapping
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
