"""Response cache (docs/cache.md): keys, the stored answer, and in-process or Redis stores."""

from __future__ import annotations

from typing import Protocol

from app.cache.answer import REPLAYED_HEADERS, CachedAnswer
from app.cache.keys import cache_key
from app.cache.memory import MemoryCache
from app.cache.redis_backend import RedisCache, redact_url
from app.cache.shared import SharedCache

__all__ = [
    "REPLAYED_HEADERS", "CachedAnswer", "MemoryCache", "RedisCache", "ResponseCache", "SharedCache", "build_cache",
    "cache_key",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ResponseCache(Protocol):
    """What the pipeline needs from a cache store; implementations never raise on get or put."""

    def get(self, key: str) -> CachedAnswer | None:
        """Return the live answer stored under key, or None."""
        ...

    def put(self, key: str, answer: CachedAnswer, max_age_s: int) -> None:
        """Store answer under key for max_age_s seconds, or skip it."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


def build_cache(backend: str, max_bytes: int, max_entry_bytes: int | None = None,
                shared_path: str | None = None) -> ResponseCache:
    """Return the store named by the [cache] backend setting: "memory" (host-wide with shared_path) or a Redis URL."""
    if backend == "memory":
        # With a shared file every worker of the host sees every answer; without one (tests, a single process)
        # each process keeps its own.
        if shared_path is not None:
            return SharedCache(shared_path, max_bytes, max_entry_bytes)
        return MemoryCache(max_bytes, max_entry_bytes)
    if backend.lower().startswith(_REDIS_SCHEMES):
        # Redis bounds its own memory (maxmemory); max_bytes only sets the default per-entry limit.
        return RedisCache(backend, max_bytes // 8 if max_entry_bytes is None else max_entry_bytes)
    raise ValueError(f"unknown cache backend {redact_url(backend)!r}: "
                     "expected 'memory' or a redis://, rediss:// or unix:// URL")
