"""A per-process response cache: an LRU bounded in bytes with a TTL per entry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachetools import TLRUCache

from app.cache.answer import CachedAnswer

# What the cache holds: the answer and its own time to live, which the TLRU reads when the entry goes in.
_Entry = tuple[CachedAnswer, float]


def _entry_size(entry: _Entry) -> int:
    """Return the bytes an entry costs."""
    return entry[0].size


def _entry_expiry(_key: str, entry: _Entry, now: float) -> float:
    """Return when an entry stops being served."""
    return now + entry[1]


class MemoryCache:
    """Keep answers in this worker process, evicting least recently used ones past max_bytes."""

    def __init__(self, max_bytes: int, max_entry_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty cache of at most max_bytes; bigger single answers than max_entry_bytes are skipped."""
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be positive, got {max_bytes}")
        # One huge answer must not flush everything else, hence the default of an eighth of the whole.
        limit = max_bytes // 8 if max_entry_bytes is None else max_entry_bytes
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(limit, max_bytes)
        self._lock = threading.Lock()
        self._store: TLRUCache[str, _Entry, float] = TLRUCache(
            maxsize=max_bytes, ttu=_entry_expiry, timer=clock, getsizeof=_entry_size)

    def get(self, key: str) -> CachedAnswer | None:
        """Return the live answer stored under key, or None."""
        with self._lock:
            entry = self._store.get(key)
        return None if entry is None else entry[0]

    def put(self, key: str, answer: CachedAnswer, max_age_s: int) -> None:
        """Store answer under key for max_age_s seconds, unless it is too big or would not live at all."""
        with self._lock:
            if max_age_s <= 0 or answer.size > self.max_entry_bytes:
                # The newer answer supersedes any older one even when it cannot be kept (a forced refresh
                # must not leave the stale entry to be served).
                self._store.pop(key, None)
                return
            self._store[key] = (answer, float(max_age_s))

    def close(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._store.clear()

    @property
    def current_bytes(self) -> int:
        """Return the bytes held by live entries."""
        with self._lock:
            return int(self._store.currsize)  # currsize drops expired entries first

    def __len__(self) -> int:
        """Return the number of live entries."""
        with self._lock:
            return len(self._store)  # len drops expired entries first

    def __bool__(self) -> bool:
        """Return True: an empty cache is still a cache (``cache or build_cache(...)`` must keep it)."""
        return True
