"""build_cache: the [cache] backend setting picks the store."""

from __future__ import annotations

import pytest

from app.cache import MemoryCache, RedisCache, build_cache


def test_memory_backend() -> None:
    cache = build_cache("memory", 80_000)
    assert isinstance(cache, MemoryCache)
    assert cache.max_bytes == 80_000 and cache.max_entry_bytes == 10_000
    custom = build_cache("memory", 80_000, max_entry_bytes=500)
    assert isinstance(custom, MemoryCache) and custom.max_entry_bytes == 500


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/1", "unix:///run/redis/redis.sock?db=0",
])
def test_redis_backends_connect_lazily(url: str) -> None:
    cache = build_cache(url, 80_000)  # no Redis is listening: building must not connect
    assert isinstance(cache, RedisCache) and cache.max_entry_bytes == 10_000
    cache.close()


@pytest.mark.parametrize("backend", ["memcached://127.0.0.1:11211", "", "Redis", "disk"])
def test_unknown_backend_is_named_in_the_error(backend: str) -> None:
    with pytest.raises(ValueError, match=f"unknown cache backend '{backend}'"):
        build_cache(backend, 80_000)


def test_unknown_backend_error_hides_a_password() -> None:
    with pytest.raises(ValueError) as caught:
        build_cache("redis+sentinel://user:hunter2@host:26379", 80_000)
    assert "hunter2" not in str(caught.value) and "redis+sentinel://user:***@host:26379" in str(caught.value)
