"""RedisStateStore against a real throwaway redis-server: the store contract, exactness across gateways and
threads (budgets admitted with their calls too), one round trip per step, outages (no password in the message, no
long hang), restarts of Redis and of the gateway, connections Redis closed, TTLs, fork."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import pytest
import redis

from app.governance import redis_store
from app.governance.keys import Budget, KeyRecord, Limits, Secret
from app.governance.redis_store import FINISH_CHUNK, PERIOD_TTL_S, SLOT_TTL_S, WINDOW_TTL_S, RedisStateStore
from app.governance.store import BudgetAsk, Finished, Reservation, StateUnavailable
from tests.fakes.net import free_port, listen_port
from tests.fakes.redis_server import RedisServer
from tests.unit.state_contract import StoreContract

PREFIX = "portico:state:"
T0 = 1_700_000_000.123456  # a realistic epoch with a fraction: scores must keep every digit


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """Run one redis-server for the module."""
    with RedisServer() as running:
        yield running


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """Return a plain client on an emptied database."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(server: RedisServer, raw: redis.Redis) -> Iterator[RedisStateStore]:
    """Return a store on the emptied database."""
    opened = RedisStateStore(server.url)
    yield opened
    opened.close()


@pytest.fixture
def other(server: RedisServer, raw: redis.Redis) -> Iterator[RedisStateStore]:
    """A second store object on the same data: another gateway host."""
    opened = RedisStateStore(server.url)
    yield opened
    opened.close()


class TestRedis(StoreContract):
    """The backend-neutral contract, on Redis."""

    @pytest.fixture
    def make_other(self, server: RedisServer, raw: redis.Redis) -> Iterator[Callable[[], RedisStateStore]]:
        """Return a function opening more store objects on the same Redis, each closed afterwards."""
        opened: list[RedisStateStore] = []

        def make() -> RedisStateStore:
            opened.append(RedisStateStore(server.url))
            return opened[-1]

        yield make
        for other_store in opened:
            other_store.close()


def record(key_id: str = "key_a", created_at: float = 10.0) -> KeyRecord:
    """Return a key record with every field set."""
    return KeyRecord(id=key_id, name=f"name of {key_id}", created_at=created_at,
                     secrets=(Secret("ab" * 32), Secret("cd" * 32, T0 + 5)), metadata={"team": "x", "n": [1, 2]},
                     models=("openai/gpt-4o*",), default_config={"provider": "openai"},
                     limits=Limits(rpm=5, max_concurrent=2), budget=Budget(2.5, "day"))


def test_exact_rpm_through_two_gateways_and_many_threads(store: RedisStateStore, other: RedisStateStore) -> None:
    limits = Limits(rpm=100)
    start = Barrier(32)

    def call(index: int) -> bool:
        if index < 32:
            start.wait()  # the first wave leaves together
        gateway = store if index % 2 else other
        return gateway.admit("key_hot", f"slot-{index}", T0 + index * 0.001, limits).admitted

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(400)))
    assert sum(results) == 100
    assert store.usage("key_hot", T0 + 1, None).requests == 100
    refused = other.admit("key_hot", "late", T0 + 1, limits)
    assert (refused.admitted, refused.limit, refused.requests) == (False, "rpm", 100)
    assert refused.retry_after_s == 59  # the oldest request (at T0) leaves at T0 + 60


def test_exact_max_concurrent_through_two_gateways(store: RedisStateStore, other: RedisStateStore) -> None:
    limits = Limits(max_concurrent=7)
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda i: (store if i % 2 else other).admit("key_c", f"s{i}", T0, limits),
                                range(50)))
    admitted = [i for i, answer in enumerate(results) if answer.admitted]
    assert len(admitted) == 7
    assert {answer.limit for answer in results if not answer.admitted} == {"max_concurrent"}
    assert {answer.retry_after_s for answer in results if not answer.admitted} == {1}
    store.finish([Finished("key_c", T0 + 1, counted=True, slot=f"s{admitted[0]}")])
    assert other.usage("key_c", T0 + 1, None).in_flight == 6
    assert other.admit("key_c", "again", T0 + 1, limits).admitted


def test_exact_budget_under_fifty_concurrent_reservations(store: RedisStateStore, other: RedisStateStore) -> None:
    start = Barrier(50)

    def reserve(index: int) -> bool:
        start.wait()
        return (store if index % 2 else other).reserve("key_b", "2026-12", 0.1, 1.0).reserved

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(reserve, range(50)))
    assert sum(results) == 10  # ten times 0.1 reaches 1.0 exactly: sums are kept in whole nano-dollars
    assert store.usage("key_b", T0, "2026-12").reserved_usd == 1.0
    store.finish([Finished("key_b", T0, counted=True, period="2026-12", reserved_usd=0.1, cost_usd=0.07)] * 3)
    usage = other.usage("key_b", T0, "2026-12")
    assert (usage.spent_usd, usage.reserved_usd) == (0.21, 0.7)
    assert other.reserve("key_b", "2026-12", 0.1, 1.0).reserved  # 0.21 + 0.7 < 1.0


@pytest.mark.parametrize("limits", [Limits(rpm=1000, max_concurrent=100), Limits()], ids=["limited", "budget-only"])
def test_exact_budget_under_fifty_concurrent_admissions(store: RedisStateStore, other: RedisStateStore,
                                                        limits: Limits) -> None:
    start = Barrier(50)

    def admit(index: int) -> Any:
        start.wait()
        gateway = store if index % 2 else other
        return gateway.admit("key_b", f"s{index}", T0 + index * 0.001, limits, BudgetAsk("2026-12", 0.1, 1.0))

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(admit, range(50)))
    admitted = [answer for answer in answers if answer.admitted]
    refused = [answer for answer in answers if not answer.admitted]
    assert len(admitted) == 10  # ten times 0.1 reaches 1.0 exactly, in whole nano-dollars
    # Each admitted call saw the reservations before it plus its own: 0.1, 0.2, ... 1.0, each once.
    assert sorted(round(answer.reservation.reserved_usd * 10) for answer in admitted) == list(range(1, 11))
    assert {(answer.limit, answer.retry_after_s, answer.reservation) for answer in refused} == {
        ("budget", 0, Reservation(False, spent_usd=0.0, reserved_usd=1.0))}
    use = store.usage("key_b", T0 + 1, "2026-12")
    # Only the admitted calls were counted, and took slots (with max_concurrent).
    assert (use.requests, use.in_flight, use.reserved_usd) == (10, 10 if limits.max_concurrent else 0, 1.0)


def test_a_spent_budget_refuses_without_writing_anything(store: RedisStateStore, raw: redis.Redis) -> None:
    store.finish([Finished("k", T0, counted=True, period="2026-12", cost_usd=0.95)])
    assert store.reserve("k", "2026-12", 0.05, 1.0).reserved  # spent + reserved now reach the budget
    refused = store.admit("k", "s", T0 + 1, Limits(rpm=10, tpm=100, max_concurrent=5), BudgetAsk("2026-12", 0.1, 1.0))
    assert (refused.admitted, refused.limit, refused.retry_after_s, refused.requests) == (False, "budget", 0, 0)
    assert refused.reservation == Reservation(False, spent_usd=0.95, reserved_usd=0.05)
    assert raw.exists(PREFIX + "req:k", PREFIX + "slots:k") == 0  # no request counted, no slot taken
    assert raw.hgetall(PREFIX + "spend:k:2026-12") == {"spent": "950000000", "reserved": "50000000"}


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, from now on, how many commands each round trip of any store carries."""
    seen: list[int] = []
    exchange = redis_store._Link.exchange

    def counted(link: Any, commands: bytes, replies: int) -> list[Any]:
        seen.append(replies)
        return exchange(link, commands, replies)

    monkeypatch.setattr(redis_store._Link, "exchange", counted)
    return seen


def test_admit_with_its_budget_is_one_script_in_one_round_trip(store: RedisStateStore, raw: redis.Redis,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store.admit("warm", "s", T0, Limits(), BudgetAsk("total", 0.1, 1.0))  # the script is in Redis now
    round_trips = count_round_trips(monkeypatch)
    scripts_before = raw.info("commandstats")["cmdstat_evalsha"]["calls"]
    limited = store.admit("k", "s1", T0, Limits(rpm=10, tpm=1000, max_concurrent=5), BudgetAsk("2026-12", 0.25, 1.0))
    assert (limited.admitted, limited.requests, limited.tokens) == (True, 1, 0)
    assert limited.reservation == Reservation(True, spent_usd=0.0, reserved_usd=0.25)
    budget_only = store.admit("k2", "s2", T0, Limits(), BudgetAsk("total", 0.5, 1.0))
    assert (budget_only.admitted, budget_only.requests) == (True, 1)
    assert budget_only.reservation == Reservation(True, spent_usd=0.0, reserved_usd=0.5)
    assert round_trips == [1, 1]
    assert raw.info("commandstats")["cmdstat_evalsha"]["calls"] - scripts_before == 2
    assert raw.hget(PREFIX + "spend:k:2026-12", "reserved") == "250000000"
    assert PERIOD_TTL_S - 10 < raw.ttl(PREFIX + "spend:k:2026-12") <= PERIOD_TTL_S
    assert raw.ttl(PREFIX + "spend:k2:total") == -1
    assert raw.zscore(PREFIX + "slots:k", "s1") == T0
    assert raw.exists(PREFIX + "slots:k2") == 0  # no max_concurrent: no slot


def test_finish_is_one_round_trip_however_many_calls(store: RedisStateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.finish([Finished("warm", T0)])
    round_trips = count_round_trips(monkeypatch)
    store.finish([Finished("k", T0, counted=True, slot=f"s{i}", tokens=1, period="total", cost_usd=0.01)
                  for i in range(10)])
    store.finish([Finished(f"k{i % 7}", T0, tokens=1) for i in range(FINISH_CHUNK * 3)])
    store.version()
    assert round_trips == [1, 3, 1]  # a batch's chunks all go in one write
    assert store.usage("k", T0, "total").tokens == 10


def test_scripts_flushed_from_redis_are_sent_again_and_run_once(store: RedisStateStore, raw: redis.Redis) -> None:
    store.finish([Finished("k0", T0)])
    raw.script_flush()  # as a restarted Redis would be: every EVALSHA of a pipelined batch fails
    calls = [Finished(f"k{i % 3}", T0 + i * 0.001, tokens=2) for i in range(FINISH_CHUNK * 2 + 5)]
    store.finish(calls)
    usages = [store.usage(f"k{i}", T0 + 1, None) for i in range(3)]
    assert sum(use.requests for use in usages) == len(calls) + 1
    assert sum(use.tokens for use in usages) == 2 * len(calls)
    raw.script_flush()
    answer = store.admit("k0", "s", T0 + 1, Limits(rpm=10**6), BudgetAsk("total", 0.1, 1.0))
    assert (answer.admitted, answer.requests) == (True, usages[0].requests + 1)


def test_a_connection_redis_closed_is_replaced_before_it_is_used(store: RedisStateStore, raw: redis.Redis) -> None:
    assert store.admit("k", "a", T0, Limits(rpm=5)).admitted  # an idle connection is kept
    assert raw.client_kill_filter(_type="normal", skipme=True) >= 1  # Redis closes it (a timeout, a restart)
    answer = store.admit("k", "b", T0 + 1, Limits(rpm=5))  # not sent on the dead one: no error
    assert (answer.admitted, answer.requests) == (True, 2)


def test_an_error_reply_is_state_unavailable_and_the_connection_stays(store: RedisStateStore,
                                                                      raw: redis.Redis) -> None:
    store.version()
    clients = len(raw.client_list())
    raw.set(PREFIX + "req:k", "not a sorted set")
    with pytest.raises(StateUnavailable, match="WRONGTYPE"):
        store.admit("k", "s", T0, Limits(rpm=5))
    raw.delete(PREFIX + "req:k")
    assert store.admit("k", "s", T0, Limits(rpm=5)).admitted
    assert len(raw.client_list()) == clients  # the same connection, still in step with its replies


def test_a_reply_larger_than_one_read_is_read_whole(store: RedisStateStore) -> None:
    records = [KeyRecord(id=f"key_{i:03d}", name=f"n{i}", created_at=float(i), metadata={"blob": "é" * 1500})
               for i in range(150)]  # about 450 KB of JSON
    for key in records:
        store.put_key(key)
    assert store.list_keys() == records


def test_stopped_redis_raises_quickly_without_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisStateStore(url)
    calls = [
        lambda: store.admit("k", "s", T0, Limits(rpm=1)), lambda: store.reserve("k", "total", 0.1, 1.0),
        lambda: store.finish([Finished("k", T0, tokens=3)]), lambda: store.usage("k", T0, "total"),
        lambda: store.put_key(record()), lambda: store.get_key("key_a"), store.list_keys, store.version,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            call()
        assert time.monotonic() - started < 0.5  # refused at once, never retried
        message = str(caught.value)
        assert "s3cret" not in message
        assert "redis://***@127.0.0.1" in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    store.close()


def test_silent_redis_times_out_within_the_operation_timeout() -> None:
    with socket.create_server(("127.0.0.1", listen_port())) as silent:  # accepts (backlog), never answers
        port = silent.getsockname()[1]
        store = RedisStateStore(f"redis://user:pw-xyz@127.0.0.1:{port}/0?password=pw-xyz", op_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            store.admit("k", "s", T0, Limits(rpm=1))
        elapsed = time.monotonic() - started
        store.close()
    assert 0.25 < elapsed < 0.59  # one timeout, no retry (a retry would take 0.6 s)
    assert "pw-xyz" not in str(caught.value)
    assert "Timeout" in str(caught.value)


def test_keys_and_spend_survive_a_new_store_object(server: RedisServer, store: RedisStateStore) -> None:
    store.put_key(record("key_b", 20.0))
    store.put_key(record("key_a", 10.0))
    store.reserve("key_a", "total", 0.5, 10.0)
    store.finish([Finished("key_a", T0, counted=False, tokens=40, period="total", reserved_usd=0.5, cost_usd=0.25)])
    version = store.version()
    store.close()
    restarted = RedisStateStore(server.url)
    assert restarted.version() == version
    assert restarted.list_keys() == [record("key_a", 10.0), record("key_b", 20.0)]
    assert restarted.get_key("key_a") == record("key_a", 10.0)
    usage = restarted.usage("key_a", T0 + 1, "total")
    assert (usage.spent_usd, usage.reserved_usd, usage.requests, usage.tokens) == (0.25, 0.0, 1, 40)
    restarted.close()


def test_a_restarted_redis_is_used_again_at_once(server: RedisServer, store: RedisStateStore) -> None:
    assert store.admit("k", "s", T0, Limits(rpm=5)).admitted  # scripts loaded, a pooled connection open
    server.stop()
    with pytest.raises(StateUnavailable):
        store.admit("k", "s", T0, Limits(rpm=5))
    server.start()  # empty, without the scripts; the pooled connection is dead
    answer = store.admit("k", "s", T0 + 1, Limits(rpm=5))
    assert (answer.admitted, answer.requests) == (True, 1)
    assert store.version() == 0


def test_a_redis_that_lost_its_data_never_repeats_a_version(store: RedisStateStore, raw: redis.Redis) -> None:
    store.put_key(record())
    seen = store.version()
    raw.flushdb()  # a Redis without persistence restarted
    store.put_key(record())
    assert store.version() not in (0, seen)  # the count restarted somewhere new (a random start)


def test_stores_with_other_prefixes_share_nothing(server: RedisServer, store: RedisStateStore) -> None:
    apart = RedisStateStore(server.url, prefix="elsewhere:")
    store.put_key(record())
    assert store.admit("k", "s", T0, Limits(rpm=1)).admitted
    assert (apart.version(), apart.list_keys()) == (0, [])
    assert apart.admit("k", "s", T0, Limits(rpm=1)).admitted
    apart.close()


def test_an_unreadable_key_is_state_unavailable(store: RedisStateStore, raw: redis.Redis) -> None:
    raw.hset(PREFIX + "keys", "key_bad", "{not json")
    with pytest.raises(StateUnavailable, match="key_bad"):
        store.get_key("key_bad")
    with pytest.raises(StateUnavailable, match="key_bad"):
        store.list_keys()


def test_keys_expire_on_their_own(store: RedisStateStore, raw: redis.Redis) -> None:
    store.put_key(record())
    store.admit("k", "s", T0, Limits(rpm=5, max_concurrent=2))
    store.finish([Finished("k", T0, counted=True, tokens=9, period="2026-12-03", reserved_usd=0.0, cost_usd=0.1),
                  Finished("k", T0, counted=True, period="total", cost_usd=0.1)])
    for name in ("req:k", "tok:k", "toksum:k"):
        assert 0 < raw.ttl(PREFIX + name) <= WINDOW_TTL_S
    assert WINDOW_TTL_S < raw.ttl(PREFIX + "slots:k") <= SLOT_TTL_S
    assert PERIOD_TTL_S - 10 < raw.ttl(PREFIX + "spend:k:2026-12-03") <= PERIOD_TTL_S
    assert raw.ttl(PREFIX + "spend:k:total") == -1  # a total budget's spend is kept for ever
    assert raw.ttl(PREFIX + "keys") == raw.ttl(PREFIX + "version") == -1


def test_window_edges_keep_every_digit_of_the_time(store: RedisStateStore) -> None:
    limits = Limits(rpm=1)
    assert store.admit("k", "s", T0, limits).admitted
    refused = store.admit("k", "s", T0 + 59.999999, limits)
    assert (refused.admitted, refused.retry_after_s) == (False, 1)
    assert store.admit("k", "s", T0 + 60, limits).admitted  # (now-60, now]: the first request is out


def test_a_caller_whose_clock_is_a_little_behind_still_sees_the_whole_window(store: RedisStateStore) -> None:
    limits = Limits(rpm=2)
    store.finish([Finished("k", T0, counted=True, tokens=60)])
    assert store.admit("k", "a", T0, limits).admitted
    assert store.admit("k", "b", T0 + 61, limits).admitted  # the first request is out of its window
    late = store.admit("k", "c", T0 + 59.5, limits)  # a racing worker read its clock 1.5 s earlier
    assert (late.admitted, late.requests, late.tokens) == (False, 2, 60)
    assert store.usage("k", T0 + 61, None).tokens == 0


def test_windows_match_a_plain_count(store: RedisStateStore) -> None:
    """The running token sum and the request count (trimmed by admit and finish) always equal a plain count."""
    rng = random.Random(7)
    tokens: dict[str, list[tuple[float, int]]] = {"k1": [], "k2": []}
    requests: dict[str, list[float]] = {"k1": [], "k2": []}
    now = T0
    for _ in range(300):
        now += rng.uniform(0, 4)
        batch = []
        for _ in range(rng.randint(1, 3)):  # a batch of calls of both keys, some late, some out of order
            key, at = rng.choice(("k1", "k2")), now - rng.uniform(0, 70) if rng.random() < 0.3 else now
            call = Finished(key, at, counted=rng.random() < 0.5, tokens=rng.choice((0, rng.randint(1, 50))))
            batch.append(call)
            tokens[key].append((at, call.tokens))
            if not call.counted:
                requests[key].append(at)
        store.finish(batch)
        if rng.random() < 0.3:
            requests["k1"].append(now)
            assert store.admit("k1", "s", now, Limits(tpm=10**9)).admitted
        for key in ("k1", "k2"):
            use = store.usage(key, now, None)
            assert use.tokens == sum(count for at, count in tokens[key] if now - 60 < at <= now)
            assert use.requests == sum(1 for at in requests[key] if now - 60 < at <= now)


def test_a_big_finish_batch_counts_every_call(store: RedisStateStore) -> None:
    calls = [Finished(f"k{i % 3}", T0 + i * 0.01, tokens=2, period="total", cost_usd=0.001)
             for i in range(FINISH_CHUNK * 2 + 17)]
    store.finish(calls)
    usages = [store.usage(f"k{i}", T0 + 6, "total") for i in range(3)]
    assert sum(u.requests for u in usages) == len(calls)
    assert sum(u.tokens for u in usages) == 2 * len(calls)
    assert round(sum(u.spent_usd for u in usages), 9) == round(0.001 * len(calls), 9)


def test_a_forked_worker_uses_its_own_connections(store: RedisStateStore) -> None:
    limits = Limits(rpm=3)
    assert store.admit("k", "parent", T0, limits).admitted  # the parent holds a pooled connection
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked after the store was made
        try:
            answer = store.admit("k", "child", T0 + 1, limits)
            os._exit(0 if answer.admitted and answer.requests == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    answer = store.admit("k", "parent", T0 + 2, limits)
    assert (answer.admitted, answer.requests) == (True, 3)
