"""Small shared thread pools for guardrail I/O (webhooks, JWKS fetches, DNS look-ups), one set per process."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Enough for the I/O checks of a few concurrent hooks; more would only hide a slow webhook.
IO_WORKERS = 8
DNS_WORKERS = 4

_lock = threading.Lock()
_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def shared_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """Return this process's pool called `name`, made on first use (so never inherited across a fork)."""
    pid = os.getpid()
    entry = _pools.get(name)
    if entry is not None and entry[0] == pid:
        return entry[1]
    with _lock:
        entry = _pools.get(name)
        if entry is None or entry[0] != pid:
            entry = (pid, ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"guardrail-{name}"))
            _pools[name] = entry
        return entry[1]


def io_pool() -> ThreadPoolExecutor:
    """Return the pool that runs webhook and jwt checks side by side."""
    return shared_pool("io", IO_WORKERS)


def dns_pool() -> ThreadPoolExecutor:
    """Return the pool that bounds validUrls' DNS look-ups (getaddrinfo has no timeout of its own)."""
    return shared_pool("dns", DNS_WORKERS)
