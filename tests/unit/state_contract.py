"""The StateStore contract (app/governance/store.py) as tests any backend must pass.

A backend's test module subclasses StoreContract and provides two fixtures:
- `store`: an open, empty store (closed by the fixture afterwards);
- `make_other`: a function opening a SECOND store object on the same backing data as `store` (another
  process's view: a second SQLiteStateStore on the same file, a second client of the same Redis), which the
  fixture closes afterwards.
Times are `now` values around the current clock; nothing sleeps.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from app.governance.keys import Budget, KeyRecord, Limits, Secret
from app.governance.store import SLOT_LEASE_S, WINDOW_S, BudgetAsk, Finished, Reservation, StateStore

MakeOther = Callable[[], StateStore]


def key_id() -> str:
    """Return a key id no other test uses (a backend may keep data between tests)."""
    return "key_" + uuid.uuid4().hex[:16]


def record(ident: str | None = None, created_at: float = 1_700_000_000.0, **changes: object) -> KeyRecord:
    """Return a key record with every field set."""
    fields: dict[str, object] = {
        "id": ident or key_id(), "name": "team-a", "created_at": created_at,
        "secrets": (Secret("a" * 64), Secret("b" * 64, 1_700_000_900.5)),
        "expires_at": 1_900_000_000.0, "revoked": False,
        "metadata": {"team": "a", "nested": {"n": [1, 2.5, None, True]}},
        "models": ("openai/gpt-4o*", "@prod/*"),
        "default_config": {"provider": "openai", "api_key": "sk-x"},
        "limits": Limits(rpm=10, tpm=1000, max_concurrent=2),
        "budget": Budget(12.5, "day"),
    }
    fields.update(changes)
    return KeyRecord(**fields)  # type: ignore[arg-type]


class StoreContract:
    """Tests every StateStore passes; subclasses provide the `store` and `make_other` fixtures."""

    @pytest.fixture
    def base(self) -> float:
        """Return a whole-second `now` near the real clock, so retry_after figures are exact."""
        return float(int(time.time()))

    # -- keys ------------------------------------------------------------------------------------------

    def test_an_unknown_key_is_none(self, store: StateStore) -> None:
        assert store.get_key(key_id()) is None

    def test_a_put_key_reads_back_equal(self, store: StateStore) -> None:
        key = record()
        store.put_key(key)
        assert store.get_key(key.id) == key

    def test_a_minimal_key_reads_back_equal(self, store: StateStore) -> None:
        key = KeyRecord(id=key_id(), name="bare", created_at=1.5)
        store.put_key(key)
        assert store.get_key(key.id) == key

    def test_put_replaces_by_id(self, store: StateStore) -> None:
        key = record()
        store.put_key(key)
        changed = record(key.id, name="renamed", revoked=True, limits=Limits(rpm=1), budget=None)
        store.put_key(changed)
        assert store.get_key(key.id) == changed
        assert [k for k in store.list_keys() if k.id == key.id] == [changed]

    def test_list_keys_is_oldest_first(self, store: StateStore) -> None:
        middle, newest, oldest = record(created_at=200.0), record(created_at=300.0), record(created_at=100.0)
        for key in (middle, newest, oldest):
            store.put_key(key)
        ours = {oldest.id, middle.id, newest.id}
        assert [k.id for k in store.list_keys() if k.id in ours] == [oldest.id, middle.id, newest.id]

    def test_version_moves_on_every_put_and_only_then(self, store: StateStore, base: float) -> None:
        key = record()
        first = store.version()
        assert store.version() == first
        store.put_key(key)
        second = store.version()
        assert second != first
        store.put_key(key)  # the same record again still counts as a change
        third = store.version()
        assert third not in (first, second)
        # Counters are not keys: workers must not re-read every key because a call was admitted.
        store.admit(key.id, "s1", base, Limits(rpm=5, max_concurrent=2))
        store.admit(key.id, "s2", base, Limits(), BudgetAsk("total", 0.25, 1.0))
        store.reserve(key.id, "total", 0.5, 1.0)
        store.finish([Finished(key.id, base, counted=True, slot="s1", tokens=3, period="total", cost_usd=0.1)])
        assert store.version() == third

    def test_another_store_sees_keys_and_version(self, store: StateStore, make_other: MakeOther) -> None:
        other = make_other()
        key = record()
        before = other.version()
        store.put_key(key)
        assert other.get_key(key.id) == key
        assert other.version() != before
        assert other.version() == store.version()
        assert key.id in [k.id for k in other.list_keys()]

    # -- admit: rpm ------------------------------------------------------------------------------------

    def test_without_limits_every_call_is_admitted_and_counted(self, store: StateStore, base: float) -> None:
        key = key_id()
        for n in range(1, 6):
            answer = store.admit(key, f"s{n}", base, Limits())
            assert answer.admitted and answer.limit is None
            assert answer.requests == n
        assert store.usage(key, base, None).requests == 5
        assert store.usage(key, base, None).in_flight == 0  # no max_concurrent: no slot held

    def test_rpm_admits_up_to_the_limit_then_refuses_naming_it(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=3)
        answers = [store.admit(key, f"s{n}", base + n, limits) for n in range(3)]
        assert [a.admitted for a in answers] == [True, True, True]
        assert [a.requests for a in answers] == [1, 2, 3]
        refused = store.admit(key, "s4", base + 10, limits)
        assert not refused.admitted
        assert refused.limit == "rpm"
        assert refused.retry_after_s == 50  # the request at `base` leaves the window at base + 60
        assert refused.requests == 3  # the refused call is not counted
        assert store.usage(key, base + 10, None).requests == 3

    def test_a_request_leaves_the_window_exactly_60_s_later(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=2)
        assert store.admit(key, "a", base, limits).admitted
        assert store.admit(key, "b", base + 30, limits).admitted
        assert store.admit(key, "c", base + 59.5, limits).retry_after_s == 1
        # The window is (now - 60, now]: at base + 60 the first request is out.
        again = store.admit(key, "d", base + WINDOW_S, limits)
        assert again.admitted and again.requests == 2
        refused = store.admit(key, "e", base + WINDOW_S + 1, limits)
        assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "rpm", 29)

    def test_retry_after_rounds_up_and_is_at_least_one(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=1)
        assert store.admit(key, "a", base + 0.5, limits).admitted
        assert store.admit(key, "b", base + 30, limits).retry_after_s == 31  # 30.5 s to go
        assert store.admit(key, "c", base + 60.4, limits).retry_after_s == 1  # 0.1 s to go
        assert store.admit(key, "d", base + 60.5, limits).admitted

    def test_limits_and_counts_are_per_key(self, store: StateStore, base: float) -> None:
        full, other, limits = key_id(), key_id(), Limits(rpm=1, max_concurrent=1)
        assert store.admit(full, "a", base, limits).admitted
        assert not store.admit(full, "b", base, limits).admitted
        answer = store.admit(other, "a", base, limits)  # the same slot name, another key
        assert answer.admitted and answer.requests == 1

    def test_two_store_objects_share_the_counters(self, store: StateStore, make_other: MakeOther,
                                                  base: float) -> None:
        other, key, limits = make_other(), key_id(), Limits(rpm=3)
        assert store.admit(key, "a", base, limits).admitted
        assert other.admit(key, "b", base + 1, limits).admitted
        assert store.admit(key, "c", base + 2, limits).requests == 3
        refused = other.admit(key, "d", base + 3, limits)
        assert (refused.admitted, refused.limit, refused.requests) == (False, "rpm", 3)
        assert other.usage(key, base + 3, None).requests == 3

    # -- admit: tpm ------------------------------------------------------------------------------------

    def test_tpm_refuses_once_finished_tokens_reach_it(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(tpm=100)
        first = store.admit(key, "a", base, limits)
        assert first.admitted and first.tokens == 0
        store.finish([Finished(key, base, counted=True, tokens=60)])
        second = store.admit(key, "b", base + 1, limits)
        assert second.admitted and second.tokens == 60 and second.requests == 2
        store.finish([Finished(key, base + 2, counted=True, tokens=40)])
        refused = store.admit(key, "c", base + 3, limits)
        assert (refused.admitted, refused.limit, refused.tokens, refused.requests) == (False, "tpm", 100, 2)
        assert refused.retry_after_s == 57  # the 60 tokens at `base` leave at base + 60
        later = store.admit(key, "d", base + WINDOW_S, limits)
        assert later.admitted and later.tokens == 40

    def test_tokens_of_uncounted_calls_count_too(self, store: StateStore, base: float) -> None:
        key = key_id()
        store.finish([Finished(key, base, counted=False, tokens=500)])
        refused = store.admit(key, "a", base + 1, Limits(rpm=10, tpm=500))
        assert (refused.admitted, refused.limit, refused.tokens, refused.requests) == (False, "tpm", 500, 1)
        assert refused.retry_after_s == 59

    def test_rpm_is_named_before_tpm(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=1, tpm=10)
        assert store.admit(key, "a", base, limits).admitted
        store.finish([Finished(key, base, counted=True, tokens=10)])
        assert store.admit(key, "b", base + 1, limits).limit == "rpm"

    # -- admit: max_concurrent -------------------------------------------------------------------------

    def test_max_concurrent_holds_slots_until_finish(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(max_concurrent=2)
        assert store.admit(key, "a", base, limits).admitted
        assert store.admit(key, "b", base, limits).admitted
        assert store.usage(key, base, None).in_flight == 2
        refused = store.admit(key, "c", base + 1, limits)
        assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "max_concurrent", 1)
        assert refused.requests == 2
        store.finish([Finished(key, base + 2, counted=True, slot="a")])
        assert store.usage(key, base + 2, None).in_flight == 1
        assert store.admit(key, "c", base + 3, limits).admitted
        assert store.usage(key, base + 3, None).in_flight == 2

    def test_a_slot_never_freed_stops_counting_after_its_lease(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(max_concurrent=1)
        assert store.admit(key, "lost", base, limits).admitted  # its worker died: no finish ever comes
        assert store.admit(key, "a", base + SLOT_LEASE_S - 1, limits).limit == "max_concurrent"
        assert store.usage(key, base + SLOT_LEASE_S - 1, None).in_flight == 1
        assert store.usage(key, base + SLOT_LEASE_S + 1, None).in_flight == 0
        assert store.admit(key, "b", base + SLOT_LEASE_S + 1, limits).admitted

    def test_slots_are_shared_between_store_objects(self, store: StateStore, make_other: MakeOther,
                                                   base: float) -> None:
        other, key, limits = make_other(), key_id(), Limits(max_concurrent=1)
        assert store.admit(key, "a", base, limits).admitted
        assert other.admit(key, "b", base, limits).limit == "max_concurrent"
        other.finish([Finished(key, base, counted=True, slot="a")])
        assert store.admit(key, "b", base, limits).admitted

    # -- finish ----------------------------------------------------------------------------------------

    def test_finish_counts_uncounted_requests(self, store: StateStore, base: float) -> None:
        key = key_id()
        store.finish([Finished(key, base), Finished(key, base + 1)])
        assert store.usage(key, base + 2, None).requests == 2
        refused = store.admit(key, "a", base + 2, Limits(rpm=2))
        assert (refused.admitted, refused.limit, refused.requests, refused.retry_after_s) == (False, "rpm", 2, 58)

    def test_finish_does_not_count_a_counted_request_twice(self, store: StateStore, base: float) -> None:
        key = key_id()
        assert store.admit(key, "a", base, Limits(rpm=5)).admitted
        store.finish([Finished(key, base + 1, counted=True, tokens=7)])
        use = store.usage(key, base + 1, None)
        assert (use.requests, use.tokens) == (1, 7)

    def test_finished_tokens_count_at_their_end_time_and_expire(self, store: StateStore, base: float) -> None:
        key = key_id()
        store.finish([Finished(key, base + 10, counted=True, tokens=50)])
        assert store.usage(key, base + 30, None).tokens == 50
        assert store.usage(key, base + 69, None).tokens == 50
        assert store.usage(key, base + 70, None).tokens == 0

    def test_finish_releases_the_reservation_and_adds_the_cost(self, store: StateStore) -> None:
        key = key_id()
        assert store.reserve(key, "2026-05", 0.5, 10.0).reserved
        store.finish([Finished(key, 1.0, counted=True, period="2026-05", reserved_usd=0.5, cost_usd=0.3)])
        use = store.usage(key, 1.0, "2026-05")
        assert use.spent_usd == pytest.approx(0.3)
        assert use.reserved_usd == pytest.approx(0.0)

    def test_a_release_never_takes_reservations_below_zero(self, store: StateStore) -> None:
        key = key_id()
        assert store.reserve(key, "total", 0.2, 10.0).reserved
        store.finish([Finished(key, 1.0, counted=True, period="total", reserved_usd=0.7, cost_usd=0.1)])
        assert store.usage(key, 1.0, "total").reserved_usd == 0.0
        # A release with nothing reserved at all (the period's first record) stays at 0 too.
        store.finish([Finished(key, 1.0, counted=True, period="fresh", reserved_usd=1.0, cost_usd=0.25)])
        fresh = store.usage(key, 1.0, "fresh")
        assert (fresh.reserved_usd, fresh.spent_usd) == (0.0, pytest.approx(0.25))
        assert store.reserve(key, "total", 0.4, 10.0).reserved_usd == pytest.approx(0.4)

    def test_costs_add_up_and_other_periods_are_apart(self, store: StateStore) -> None:
        key = key_id()
        store.finish([Finished(key, 1.0, counted=True, period="2026-05-01", cost_usd=0.25),
                      Finished(key, 2.0, counted=True, period="2026-05-01", cost_usd=0.5),
                      Finished(key, 3.0, counted=True, period="2026-05-02", cost_usd=2.0)])
        assert store.usage(key, 3.0, "2026-05-01").spent_usd == pytest.approx(0.75)
        assert store.usage(key, 3.0, "2026-05-02").spent_usd == pytest.approx(2.0)
        assert store.usage(key, 3.0, "2026-05-03").spent_usd == 0.0

    def test_finish_records_calls_of_several_keys_in_one_go(self, store: StateStore, base: float) -> None:
        first, second, limits = key_id(), key_id(), Limits(max_concurrent=1)
        assert store.admit(first, "a", base, limits).admitted
        assert store.admit(second, "a", base, limits).admitted
        store.finish([Finished(first, base + 1, counted=True, slot="a", tokens=3, period="total", cost_usd=1.0),
                      Finished(second, base + 1, counted=True, slot="a", tokens=4),
                      Finished(second, base + 2, counted=False, tokens=5)])
        one, two = store.usage(first, base + 2, "total"), store.usage(second, base + 2, "total")
        assert (one.requests, one.tokens, one.in_flight, one.spent_usd) == (1, 3, 0, 1.0)
        assert (two.requests, two.tokens, two.in_flight, two.spent_usd) == (2, 9, 0, 0.0)

    def test_finish_of_nothing_or_of_an_unknown_slot_is_harmless(self, store: StateStore, base: float) -> None:
        key = key_id()
        store.finish([])
        store.finish([Finished(key, base, counted=True, slot="never-held")])
        use = store.usage(key, base, None)
        assert (use.requests, use.tokens, use.in_flight) == (0, 0, 0)

    # -- reserve ---------------------------------------------------------------------------------------

    def test_reserve_reports_the_period_and_includes_this_reservation(self, store: StateStore) -> None:
        key = key_id()
        first = store.reserve(key, "2026-05", 0.25, 1.0)
        assert (first.reserved, first.spent_usd, first.reserved_usd) == (True, 0.0, 0.25)
        second = store.reserve(key, "2026-05", 0.5, 1.0)
        assert (second.reserved, second.reserved_usd) == (True, 0.75)
        assert store.usage(key, 0.0, "2026-05").reserved_usd == 0.75

    def test_reserve_is_refused_once_spent_and_reserved_reach_the_budget(self, store: StateStore) -> None:
        key = key_id()
        assert store.reserve(key, "total", 0.6, 1.0).reserved
        # Below the budget before this one: reserved, even though it goes past (calls overspend by at most this).
        assert store.reserve(key, "total", 0.6, 1.0).reserved
        refused = store.reserve(key, "total", 0.01, 1.0)
        assert (refused.reserved, refused.spent_usd) == (False, 0.0)
        assert refused.reserved_usd == pytest.approx(1.2)  # not increased by the refused amount
        assert store.usage(key, 0.0, "total").reserved_usd == pytest.approx(1.2)

    def test_spend_alone_can_exhaust_the_budget(self, store: StateStore) -> None:
        key = key_id()
        store.finish([Finished(key, 1.0, counted=True, period="2026-05", cost_usd=1.0)])
        refused = store.reserve(key, "2026-05", 0.0, 1.0)
        assert (refused.reserved, refused.spent_usd, refused.reserved_usd) == (False, 1.0, 0.0)
        assert store.reserve(key, "2026-06", 0.1, 1.0).reserved  # a new period starts from nothing

    def test_a_zero_budget_refuses_everything(self, store: StateStore) -> None:
        key = key_id()
        assert not store.reserve(key, "day", 0.0, 0.0).reserved
        assert not store.reserve(key, "day", 0.5, 0.0).reserved

    def test_ten_tenths_fill_a_dollar_exactly(self, store: StateStore) -> None:
        key = key_id()
        answers = [store.reserve(key, "total", 0.1, 1.0) for _ in range(12)]
        assert [a.reserved for a in answers] == [True] * 10 + [False] * 2
        assert answers[-1].reserved_usd == pytest.approx(1.0)

    def test_budgets_are_per_key(self, store: StateStore) -> None:
        spent, fresh = key_id(), key_id()
        assert store.reserve(spent, "total", 1.0, 1.0).reserved
        assert not store.reserve(spent, "total", 1.0, 1.0).reserved
        assert store.reserve(fresh, "total", 1.0, 1.0).reserved

    def test_reservations_are_shared_between_store_objects(self, store: StateStore, make_other: MakeOther) -> None:
        other, key = make_other(), key_id()
        assert store.reserve(key, "total", 0.5, 1.0).reserved
        assert other.reserve(key, "total", 0.5, 1.0).reserved
        assert not store.reserve(key, "total", 0.5, 1.0).reserved
        other.finish([Finished(key, 1.0, counted=True, period="total", reserved_usd=0.5, cost_usd=0.2)])
        assert store.usage(key, 1.0, "total").reserved_usd == pytest.approx(0.5)
        assert store.usage(key, 1.0, "total").spent_usd == pytest.approx(0.2)

    # -- admit with a budget --------------------------------------------------------------------------

    def test_admit_reserves_from_the_budget_in_the_same_step(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=5, max_concurrent=3)
        first = store.admit(key, "a", base, limits, BudgetAsk("2026-05", 0.25, 1.0))
        assert (first.admitted, first.limit, first.requests) == (True, None, 1)
        assert first.reservation == Reservation(True, 0.0, 0.25)
        second = store.admit(key, "b", base, limits, BudgetAsk("2026-05", 0.5, 1.0))
        assert second.reservation is not None
        assert (second.reservation.reserved, second.reservation.reserved_usd) == (True, 0.75)
        use = store.usage(key, base, "2026-05")
        assert (use.requests, use.in_flight, use.reserved_usd, use.spent_usd) == (2, 2, 0.75, 0.0)

    def test_a_spent_budget_refuses_and_counts_nothing(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=5, tpm=100, max_concurrent=3)
        assert store.admit(key, "a", base, limits, BudgetAsk("2026-05", 0.4, 1.0)).admitted
        store.finish([Finished(key, base, counted=True, slot="a", tokens=10, period="2026-05",
                               reserved_usd=0.4, cost_usd=0.7)])
        assert store.admit(key, "b", base + 1, limits, BudgetAsk("2026-05", 0.3, 1.0)).admitted  # 0.7 < 1.0
        refused = store.admit(key, "c", base + 2, limits, BudgetAsk("2026-05", 0.1, 1.0))
        assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "budget", 0)
        assert (refused.requests, refused.tokens) == (2, 10)  # the window's use, this call not in it
        assert refused.reservation is not None and not refused.reservation.reserved
        assert refused.reservation.spent_usd == pytest.approx(0.7)
        assert refused.reservation.reserved_usd == pytest.approx(0.3)  # not increased by the refused ask
        use = store.usage(key, base + 2, "2026-05")
        assert (use.requests, use.in_flight) == (2, 1)  # no request counted, no slot taken
        assert use.reserved_usd == pytest.approx(0.3)
        # The slot it did not take stays free: with it freed, the others still fit max_concurrent.
        assert store.admit(key, "d", base + 3, Limits(max_concurrent=2)).admitted

    def test_rate_limits_refuse_before_the_budget_is_asked(self, store: StateStore, base: float) -> None:
        key = key_id()
        assert store.admit(key, "a", base, Limits(rpm=1), BudgetAsk("total", 0.5, 1.0)).admitted
        refused = store.admit(key, "b", base + 1, Limits(rpm=1), BudgetAsk("total", 0.5, 1.0))
        assert (refused.admitted, refused.limit, refused.retry_after_s) == (False, "rpm", 59)
        assert store.usage(key, base + 1, "total").reserved_usd == 0.5  # nothing reserved for the refused call
        # Both refused: the rate limit is the one named.
        assert store.reserve(key, "total", 0.5, 1.0).reserved
        assert store.admit(key, "c", base + 2, Limits(rpm=1), BudgetAsk("total", 0.5, 1.0)).limit == "rpm"

    def test_a_budget_only_key_is_admitted_counted_and_reserved(self, store: StateStore, base: float) -> None:
        key = key_id()
        answers = [store.admit(key, f"s{n}", base, Limits(), BudgetAsk("day", 0.1, 1.0)) for n in range(12)]
        assert [a.admitted for a in answers] == [True] * 10 + [False] * 2
        assert [a.requests for a in answers[:10]] == list(range(1, 11))
        assert {a.limit for a in answers[10:]} == {"budget"}
        assert answers[9].reservation is not None
        assert answers[9].reservation.reserved_usd == pytest.approx(1.0)  # ten tenths fill a dollar exactly
        use = store.usage(key, base, "day")
        assert (use.requests, use.in_flight, use.reserved_usd) == (10, 0, pytest.approx(1.0))

    def test_a_zero_ask_checks_the_budget_without_reserving(self, store: StateStore, base: float) -> None:
        key = key_id()
        free = store.admit(key, "a", base, Limits(), BudgetAsk("total", 0.0, 1.0))
        assert free.admitted and free.reservation == Reservation(True, 0.0, 0.0)
        store.finish([Finished(key, base, counted=True, period="total", cost_usd=1.0)])
        refused = store.admit(key, "b", base, Limits(), BudgetAsk("total", 0.0, 1.0))
        assert (refused.admitted, refused.limit) == (False, "budget")
        assert refused.reservation == Reservation(False, 1.0, 0.0)

    def test_admit_and_reserve_share_the_budget_across_stores(self, store: StateStore, make_other: MakeOther,
                                                              base: float) -> None:
        other, key = make_other(), key_id()
        assert store.admit(key, "a", base, Limits(rpm=10), BudgetAsk("total", 0.5, 1.0)).admitted
        assert other.reserve(key, "total", 0.5, 1.0).reserved
        refused = other.admit(key, "b", base, Limits(rpm=10), BudgetAsk("total", 0.1, 1.0))
        assert (refused.admitted, refused.limit, refused.requests) == (False, "budget", 1)
        other.finish([Finished(key, base, counted=True, period="total", reserved_usd=0.5, cost_usd=0.2)])
        again = store.admit(key, "c", base, Limits(rpm=10), BudgetAsk("total", 0.1, 1.0))
        assert again.admitted and again.reservation is not None
        assert (again.reservation.spent_usd, again.reservation.reserved_usd) == (pytest.approx(0.2),
                                                                                 pytest.approx(0.6))

    # -- usage -----------------------------------------------------------------------------------------

    def test_usage_of_an_unknown_key_is_all_zero(self, store: StateStore, base: float) -> None:
        use = store.usage(key_id(), base, "total")
        assert (use.spent_usd, use.reserved_usd, use.requests, use.tokens, use.in_flight) == (0.0, 0.0, 0, 0, 0)

    def test_usage_without_a_period_reports_no_spend(self, store: StateStore, base: float) -> None:
        key = key_id()
        assert store.reserve(key, "total", 0.5, 1.0).reserved
        store.finish([Finished(key, base, counted=True, period="total", cost_usd=0.25)])
        use = store.usage(key, base, None)
        assert (use.spent_usd, use.reserved_usd) == (0.0, 0.0)

    def test_usage_counts_calls_recorded_only_by_finish(self, store: StateStore, base: float) -> None:
        # A key with only a budget: its calls never pass admit(), finish counts them.
        key = key_id()
        store.finish([Finished(key, base - 70, tokens=1000),  # out of the window by `base`
                      Finished(key, base - 30, tokens=20, period="2026-05", reserved_usd=0.1, cost_usd=0.05),
                      Finished(key, base - 1, tokens=30, period="2026-05", cost_usd=0.05)])
        use = store.usage(key, base, "2026-05")
        assert (use.requests, use.tokens, use.in_flight) == (2, 50, 0)
        assert use.spent_usd == pytest.approx(0.1)
        assert use.reserved_usd == 0.0
        assert store.usage(key, base + 31, "2026-05").requests == 1

    def test_usage_reports_everything_at_once(self, store: StateStore, base: float) -> None:
        key, limits = key_id(), Limits(rpm=10, max_concurrent=5)
        for slot in ("a", "b", "c"):
            assert store.admit(key, slot, base, limits).admitted
        store.finish([Finished(key, base + 1, counted=True, slot="a", tokens=11, period="2026-05",
                               reserved_usd=0.0, cost_usd=0.02)])
        assert store.reserve(key, "2026-05", 0.3, 5.0).reserved
        use = store.usage(key, base + 2, "2026-05")
        assert (use.requests, use.tokens, use.in_flight) == (3, 11, 2)
        assert (use.spent_usd, use.reserved_usd) == (pytest.approx(0.02), pytest.approx(0.3))
