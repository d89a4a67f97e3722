"""Open the state store a gateway file names: [state] backend (sqlite or redis://) and [state] path."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

from app.governance.store import StateStore, StateUnavailable


def open_store(backend: str, path: str | None) -> StateStore:
    """Return the state store: Redis for a redis:// backend, else the SQLite file (None: a throwaway one)."""
    if backend != "sqlite":
        from app.governance.redis_store import RedisStateStore

        return RedisStateStore(backend)
    from app.governance.sqlite_store import SQLiteStateStore

    if path is None:
        # No file named (an app built from code, as tests do): a file of this app's own, so two apps in one
        # process never see each other's keys.
        folder = tempfile.mkdtemp(prefix="portico-state-")
        store = SQLiteStateStore(os.path.join(folder, "state.sqlite"))
        weakref.finalize(store, shutil.rmtree, folder, True)
        return store
    return SQLiteStateStore(path)


def has_managed_keys(backend: str, path: str | None) -> bool:
    """Tell whether the state store holds any key (a revoked one too); False when it cannot be read."""
    if backend == "sqlite" and path is None:
        return False
    try:
        store = open_store(backend, path)
    except StateUnavailable:
        return False
    try:
        return bool(store.list_keys())
    except StateUnavailable:
        return False
    finally:
        store.close()
