"""Which key a secret opens: the static keys and a per-worker copy of the store's keys (docs/governance.md).

Every call looks its key up here, in memory. The copy is read again when the store's version moves, checked at
most every REFRESH_S, so a change made on any worker or host takes effect within a second.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterable

from app.governance.keys import KeyRecord
from app.governance.store import StateStore, StateUnavailable

log = logging.getLogger(__name__)
REFRESH_S = 0.5
# An unknown secret may belong to a key created a moment ago on another worker: the store's version is then
# checked again at once (one small read; a client guessing keys costs the store that much per guess).
MISS_REFRESH_S = 0.0


class KeyIndex:
    """Secrets' hashes to keys, for the static keys of the gateway file and the managed keys of the store."""

    def __init__(self, static: Iterable[KeyRecord], store: StateStore) -> None:
        self.static = tuple(static)
        self.store = store
        self._lock = threading.Lock()
        self._version: int | None = None
        self._checked = 0.0
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._managed = False
        self._build(())

    @property
    def has_keys(self) -> bool:
        """Tell whether any key exists (a revoked one too): a gateway with keys is never open."""
        self.refresh()
        return bool(self.static) or self._managed

    def find(self, sha256: str, now: float, recheck: bool = True) -> KeyRecord | None:
        """Return the key one of whose secrets hashes to `sha256` and still works at `now`, else None.

        recheck: on a miss, read the store's version again first (not for a token that is most likely a
        provider's key, checked only so that a gateway key is never forwarded).
        """
        self.refresh()
        record = self._by_hash.get(sha256)
        if record is None and recheck:
            self.refresh(min_age=MISS_REFRESH_S)
            record = self._by_hash.get(sha256)
        if record is None:
            return None
        # The dict found it; the comparison that decides is constant-time all the same.
        for secret in record.secrets:
            if hmac.compare_digest(secret.sha256, sha256) and secret.works_at(now):
                return record
        return None

    def get(self, key_id: str) -> KeyRecord | None:
        """Return a key by id (static keys are `static:<name>`)."""
        self.refresh()
        return self._by_id.get(key_id)

    def all(self) -> list[KeyRecord]:
        """Return every key: static ones first, then managed ones."""
        self.refresh()
        return list(self._by_id.values())

    def refresh(self, force: bool = False, min_age: float = REFRESH_S) -> None:
        """Read the store's keys again if its version moved; checked at most every `min_age` s unless forced."""
        if not force and time.monotonic() - self._checked < min_age:
            return
        with self._lock:
            # Checked again once the lock is held: a thread that waited here for another's read uses that read.
            started = time.monotonic()
            if not force and started - self._checked < min_age:
                return
            try:
                version = self.store.version()
                if version != self._version or force:
                    self._build(self.store.list_keys())
                    self._version = version
            except StateUnavailable as err:
                # Keep serving the keys read last: a store that blinks must not lock every client out.
                log.warning("state store unavailable, using the keys read last: %s", err)
            self._checked = started  # only now: until the read is done, other threads wait for it

    def _build(self, managed: Iterable[KeyRecord]) -> None:
        """Replace the lookup tables at once (readers see the old or the new ones, never a mix)."""
        managed = list(managed)
        by_id = {record.id: record for record in (*self.static, *managed)}
        by_hash = {secret.sha256: record for record in by_id.values() for secret in record.secrets}
        self._by_id, self._by_hash, self._managed = by_id, by_hash, bool(managed)
