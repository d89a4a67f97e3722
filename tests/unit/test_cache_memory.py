"""MemoryCache: byte bound, per-entry TTL, size limits and thread safety."""

from __future__ import annotations

import random
import threading

from app.cache import CachedAnswer, MemoryCache
from app.cache.answer import ENTRY_OVERHEAD_BYTES

JSON = (("content-type", "application/json"),)


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def answer(body_bytes: int, fill: bytes = b"x") -> CachedAnswer:
    """Return a 200 JSON answer with a body of body_bytes bytes."""
    return CachedAnswer(200, JSON, (fill * body_bytes)[:body_bytes])


def test_size_counts_body_headers_and_overhead() -> None:
    item = CachedAnswer(200, (("content-type", "text/plain"),), b"12345")
    assert item.size == 5 + len("content-type") + len("text/plain") + ENTRY_OVERHEAD_BYTES


def test_from_response_keeps_only_replayed_headers() -> None:
    item = CachedAnswer.from_response(
        201, [("Content-Type", "application/json"), ("Date", "now"), ("Content-Encoding", "gzip")], b"{}")
    assert item == CachedAnswer(201, (("content-type", "application/json"), ("content-encoding", "gzip")), b"{}")


def test_hit_returns_the_stored_answer_itself() -> None:
    cache = MemoryCache(1 << 20)
    stored = answer(1000)
    cache.put("k", stored, 60)
    assert cache.get("k") is stored  # immutable, so no copy is made
    assert cache.get("other") is None
    assert len(cache) == 1 and cache.current_bytes == stored.size


def test_byte_bound_evicts_least_recently_used() -> None:
    item_size = answer(1000).size
    cache = MemoryCache(max_bytes=10 * item_size, max_entry_bytes=item_size)
    for i in range(10):
        cache.put(f"k{i}", answer(1000), 60)
    assert cache.current_bytes == 10 * item_size
    assert cache.get("k0") is not None  # k0 is now the most recently used; k1 the least
    for i in range(10, 25):
        cache.put(f"k{i}", answer(1000), 60)
        assert cache.current_bytes <= cache.max_bytes
    assert cache.get("k1") is None
    assert cache.get("k24") is not None
    assert len(cache) == 10


def test_entries_of_different_sizes_stay_within_the_bound() -> None:
    cache = MemoryCache(max_bytes=50_000, max_entry_bytes=10_000)
    rng = random.Random(7)
    for i in range(500):
        cache.put(f"k{i}", answer(rng.randrange(0, 9_000)), 60)
        assert cache.current_bytes <= 50_000
    assert cache.get("k499") is not None


def test_oversized_entry_is_not_stored() -> None:
    cache = MemoryCache(max_bytes=80_000)  # default max entry: an eighth, 10 000 bytes
    cache.put("big", answer(10_000), 60)
    assert cache.get("big") is None and cache.current_bytes == 0
    cache.put("fits", answer(9_000), 60)
    assert cache.get("fits") is not None

    strict = MemoryCache(max_bytes=80_000, max_entry_bytes=1_000)
    strict.put("k", answer(1_000), 60)
    assert strict.get("k") is None


def test_unstorable_answer_drops_the_older_one() -> None:
    cache = MemoryCache(max_bytes=80_000)
    cache.put("k", answer(10), 60)
    cache.put("k", answer(20_000), 60)  # a refresh that is too big must not leave the stale answer behind
    assert cache.get("k") is None


def test_zero_or_negative_max_age_is_not_stored() -> None:
    cache = MemoryCache(1 << 20)
    cache.put("zero", answer(10), 0)
    cache.put("negative", answer(10), -5)
    assert cache.get("zero") is None and cache.get("negative") is None and len(cache) == 0


def test_per_entry_ttl_with_an_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(1 << 20, clock=clock)
    short, long = answer(10), answer(20)
    cache.put("short", short, 10)
    cache.put("long", long, 100)
    clock.advance(9.9)
    assert cache.get("short") is short and cache.get("long") is long
    clock.advance(0.2)
    assert cache.get("short") is None and cache.get("long") is long
    assert cache.current_bytes == long.size and len(cache) == 1
    clock.advance(90)
    assert cache.get("long") is None
    assert cache.current_bytes == 0 and len(cache) == 0


def test_put_again_replaces_answer_and_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(1 << 20, clock=clock)
    cache.put("k", answer(10), 10)
    newer = answer(30)
    cache.put("k", newer, 100)
    clock.advance(50)
    assert cache.get("k") is newer
    assert cache.current_bytes == newer.size


def test_an_empty_cache_is_still_truthy() -> None:
    cache = MemoryCache(1 << 20)
    assert len(cache) == 0 and cache  # so `injected or build_cache(...)` keeps an injected empty cache


def test_close_empties_the_cache() -> None:
    cache = MemoryCache(1 << 20)
    cache.put("k", answer(10), 60)
    cache.close()
    assert cache.get("k") is None and cache.current_bytes == 0


def test_sixteen_threads_putting_and_getting() -> None:
    cache = MemoryCache(max_bytes=200_000, max_entry_bytes=5_000)
    keys = [f"key-{i}" for i in range(400)]
    # Each key's body names the key, so a get that returned another key's answer would show.
    bodies = {k: (k.encode() + b":") * (1 + i % 200) for i, k in enumerate(keys)}
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(3_000):
                k = rng.choice(keys)
                if rng.random() < 0.4:
                    cache.put(k, CachedAnswer(200, JSON, bodies[k]), rng.randrange(1, 3600))
                else:
                    got = cache.get(k)
                    assert got is None or got.body == bodies[k]
                assert cache.current_bytes <= 200_000
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    present = [found for k in keys if (found := cache.get(k)) is not None]
    assert len(present) == len(cache) > 0
    assert sum(item.size for item in present) == cache.current_bytes <= 200_000
