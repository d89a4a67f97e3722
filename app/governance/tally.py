"""Finished calls on their way to the state store, written by one background thread per worker.

A call ends where its answer ends: for a stream that is the worker's event loop, which must never wait on a
store. So the end is queued here: a governed key's (its slot, reservation and tokens count against the next
calls) is written within URGENT_S, an unlimited key's within a second, each batch in one transaction.
"""

from __future__ import annotations

import logging
import threading
import time

from app.governance.store import Finished, StateStore, StateUnavailable

log = logging.getLogger(__name__)
BATCH_S = 1.0  # how long an unlimited key's finished call may wait for company
URGENT_S = 0.02  # how long a governed key's waits: its slot and tokens count against the next calls
MAX_PENDING = 100_000  # beyond this (a store down for long) the oldest are dropped, and logged


class Tally:
    """Queues finished calls and writes them to the store in batches, on its own thread."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._pending: list[Finished] = []
        self._wake = threading.Condition()
        self._urgent = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._dropped = 0

    def add(self, call: Finished, urgent: bool) -> None:
        """Queue a finished call; urgent ones (limited or budgeted keys) are written without waiting."""
        with self._wake:
            if self._closed:
                return
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(0)
                self._dropped += 1
            self._pending.append(call)
            if urgent:
                self._urgent = True
                self._wake.notify()
            if self._thread is None:
                # Started on first use, in the process that uses it: a thread does not survive a fork.
                self._thread = threading.Thread(target=self._run, name="portico-tally", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write everything queued now, on the caller's thread."""
        with self._wake:
            batch, self._pending, self._urgent = self._pending, [], False
        self._write(batch)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._urgent and not self._closed:
                    self._wake.wait(BATCH_S)
                if self._closed:
                    return
                urgent = self._urgent
            if urgent:
                time.sleep(URGENT_S)  # calls ending meanwhile join this batch: one transaction for them all
            with self._wake:
                batch, self._pending, self._urgent = self._pending, [], False
            self._write(batch)

    def _write(self, batch: list[Finished]) -> None:
        if not batch:
            return
        try:
            self.store.finish(batch)
        except StateUnavailable as err:
            # Put them back for the next turn: a slot or a reservation left held would refuse calls later.
            log.warning("state store unavailable, %d finished calls wait for it: %s", len(batch), err)
            with self._wake:
                self._pending[:0] = batch
                del self._pending[:max(0, len(self._pending) - MAX_PENDING)]
        except Exception:  # noqa: BLE001 - the writer thread must not die
            log.exception("could not record %d finished calls in the state store", len(batch))
        if self._dropped:
            log.error("state store: %d finished calls dropped while it was unavailable", self._dropped)
            self._dropped = 0
