"""Tests for retry waits (app.pipeline.backoff)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from requests.structures import CaseInsensitiveDict

from app.config.models import RetryPolicy
from app.pipeline.backoff import MAX_RETRY_WAIT_S, backoff_delay, next_wait, retry_after_seconds

NOW = 1_700_000_000.0  # an injected clock; 2023-11-14 22:13:20 GMT
HONOUR = RetryPolicy(attempts=3, use_retry_after_header=True)
IGNORE = RetryPolicy(attempts=3, use_retry_after_header=False)


class FixedRandom(random.Random):
    """A Random whose random() always returns `value`, to pin jitter to an end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# --- backoff_delay ----------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_number", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0),
                                                       (6, 30.0), (7, 30.0), (10_000, 30.0)])
def test_backoff_doubles_up_to_the_cap(retry_number: int, ceiling: float) -> None:
    assert backoff_delay(retry_number, 1000, FixedRandom(0.0)) == ceiling / 2
    assert backoff_delay(retry_number, 1000, FixedRandom(0.999999)) == pytest.approx(ceiling, rel=1e-5)


@pytest.mark.parametrize("retry_number", range(1, 9))
def test_equal_jitter_stays_within_half_to_full_ceiling(retry_number: int) -> None:
    ceiling = min(30.0, 0.5 * 2 ** (retry_number - 1))
    rng = random.Random(1234)
    delays = [backoff_delay(retry_number, 500, rng) for _ in range(500)]
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1  # it is jittered


def test_seeded_rng_is_reproducible() -> None:
    first = [backoff_delay(n, 1000, random.Random(7)) for n in range(1, 6)]
    second = [backoff_delay(n, 1000, random.Random(7)) for n in range(1, 6)]
    assert first == second
    # The same draw scaled: each step's jittered wait doubles while under the cap.
    assert [round(b / a, 9) for a, b in zip(first, first[1:], strict=False)] == [2.0] * 4


def test_custom_cap() -> None:
    assert backoff_delay(10, 1000, FixedRandom(0.0), cap_s=5.0) == 2.5
    assert backoff_delay(10, 1000, FixedRandom(0.999999), cap_s=5.0) <= 5.0


@pytest.mark.parametrize("retry_number", [1, 2, 5, 100])
def test_base_zero_is_always_zero(retry_number: int) -> None:
    assert backoff_delay(retry_number, 0, random.Random(1)) == 0.0
    assert backoff_delay(retry_number, 0) == 0.0


def test_default_rng_stays_in_bounds() -> None:
    assert 0.5 <= backoff_delay(1, 1000) <= 1.0


def test_retry_number_is_one_based() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, 1000)


# --- retry_after_seconds ------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "250.5"}, 0.2505),
    ({"x-ms-retry-after-ms": "2000"}, 2.0),
    ({"X-MS-Retry-After-MS": "0"}, 0.0),
    ({"retry-after": "7"}, 7.0),
    ({"Retry-After": " 12 "}, 12.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "0"}, 0.0),
])
def test_retry_after_forms(headers: dict[str, str], expected: float) -> None:
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(expected)


def test_retry_after_http_date() -> None:
    in_90s = formatdate(NOW + 90, usegmt=True)
    assert retry_after_seconds({"Retry-After": in_90s}, now=NOW) == pytest.approx(90.0)
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, now=NOW) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert retry_after_seconds({"retry-after": formatdate(NOW - 300, usegmt=True)}, now=NOW) == 0.0


def test_retry_after_http_date_without_zone_is_gmt() -> None:
    assert retry_after_seconds({"retry-after": "Tue, 14 Nov 2023 22:13:30 -0000"}, now=NOW) == pytest.approx(10.0)


def test_retry_after_http_date_uses_the_clock_by_default() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "9", "x-ms-retry-after-ms": "2000", "retry-after-ms": "1000"}, 1.0),
    ({"retry-after": "9", "x-ms-retry-after-ms": "2000"}, 2.0),
    ({"Retry-After": "9", "X-Ms-Retry-After-Ms": "oops", "Retry-After-Ms": "-5"}, 9.0),
    ({"retry-after-ms": "nan", "x-ms-retry-after-ms": "3000"}, 3.0),
])
def test_precedence_and_invalid_values_skipped(headers: dict[str, str], expected: float) -> None:
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["-1", "soon", "", "inf", "nan", "1e3", "1_000", "0x10", "1" * 400,
                                   "Wed, 21 Oct 99999 07:28:00 GMT", "5, 6"])
def test_invalid_values_are_ignored(value: str) -> None:
    headers = {"retry-after-ms": value, "x-ms-retry-after-ms": value, "retry-after": value}
    assert retry_after_seconds(headers, now=NOW) is None


def test_no_headers_is_none() -> None:
    assert retry_after_seconds({}, now=NOW) is None
    assert retry_after_seconds({"content-type": "application/json"}, now=NOW) is None


def test_case_insensitive_dict_from_requests() -> None:
    headers = CaseInsensitiveDict({"Retry-After-MS": "300", "Content-Type": "application/json"})
    assert retry_after_seconds(headers, now=NOW) == pytest.approx(0.3)


# --- next_wait ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_on_429_and_503(status: int) -> None:
    assert next_wait(HONOUR, status, {"Retry-After": "5"}, 1, 1000, 0.0, now=NOW) == 5.0


@pytest.mark.parametrize("status", [500, 502, 504, None])
def test_other_statuses_use_backoff(status: int | None) -> None:
    assert next_wait(HONOUR, status, {"Retry-After": "50"}, 2, 1000, 0.0, FixedRandom(0.0), NOW) == 1.0


def test_retry_after_ignored_when_policy_says_so() -> None:
    assert next_wait(IGNORE, 429, {"Retry-After": "50"}, 3, 1000, 0.0, FixedRandom(0.0), NOW) == 2.0
    assert next_wait(IGNORE, 429, {"Retry-After": "50"}, 1, 0, 0.0, now=NOW) == 0.0


def test_no_usable_retry_after_falls_back_to_backoff() -> None:
    assert next_wait(HONOUR, 429, {"Retry-After": "whenever"}, 1, 1000, 0.0, FixedRandom(0.0), NOW) == 0.5
    assert next_wait(HONOUR, 429, None, 1, 1000, 0.0, FixedRandom(0.0), NOW) == 0.5
    assert next_wait(HONOUR, 503, {}, 1, 0, 0.0, now=NOW) == 0.0


def test_retry_after_over_60_seconds_stops() -> None:
    assert next_wait(HONOUR, 429, {"retry-after": "61"}, 1, 0, 0.0, now=NOW) is None
    assert next_wait(HONOUR, 429, {"retry-after-ms": "60001"}, 1, 0, 0.0, now=NOW) is None
    assert next_wait(HONOUR, 429, {"retry-after": formatdate(NOW + 120, usegmt=True)}, 1, 0, 0.0, now=NOW) is None
    assert next_wait(HONOUR, 429, {"retry-after": "60"}, 1, 0, 0.0, now=NOW) == MAX_RETRY_WAIT_S


def test_retry_after_beyond_remaining_budget_stops() -> None:
    assert next_wait(HONOUR, 503, {"retry-after": "20"}, 2, 0, 45.0, now=NOW) is None
    assert next_wait(HONOUR, 503, {"retry-after": "15"}, 2, 0, 45.0, now=NOW) == 15.0


def test_backoff_beyond_remaining_budget_stops() -> None:
    # Retry 5 with a 1 s base waits 8-16 s; only 5 s of budget remain.
    assert next_wait(IGNORE, 500, None, 5, 1000, 55.0, FixedRandom(0.0)) is None
    assert next_wait(IGNORE, 500, None, 5, 1000, 40.0, FixedRandom(0.0)) == 8.0


def test_spent_budget_stops_even_a_zero_wait() -> None:
    assert next_wait(IGNORE, 500, None, 1, 0, 59.0) == 0.0
    assert next_wait(IGNORE, 500, None, 1, 0, 61.0) is None
