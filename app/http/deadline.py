"""Deadlines for waits on another host: a timeout that bytes trickled one by one cannot stretch.

A socket timeout bounds each read: a host that sends one byte a second never trips it (docs/security.md).
A Deadline bounds the whole wait instead. While one is open in a thread, the pooled connections that thread
uses put their socket under it (`guard`), and one watchdog thread per process shuts those sockets down when
the deadline passes; that ends whatever read, write or TLS handshake was waiting on them, and the caller,
seeing `expired`, reports a timeout. The watchdog shuts down its own duplicate of the socket's descriptor, so
it can never touch a descriptor number that the owner closed and the process reused.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

_GUARD = "_portico_deadline_guard"  # on a connection: (Deadline, duplicate descriptor) while guarded
_local = threading.local()


class Deadline:
    """A wait that must be over `seconds` after it opens; `expired` says the watchdog ended it."""

    __slots__ = ("seconds", "at", "expired", "closed", "queued", "socks", "previous")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = 0.0
        self.expired = False
        self.closed = False
        self.queued = False
        self.socks: list[int] = []  # duplicate descriptors of the sockets it guards
        self.previous: Deadline | None = None

    def __enter__(self) -> Deadline:
        self.previous = getattr(_local, "deadline", None)
        _local.deadline = self
        WATCHDOG.arm(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        _local.deadline, self.previous = self.previous, None
        WATCHDOG.disarm(self)


def guard(conn: Any, sock: socket.socket) -> None:
    """Put a connection's socket under the thread's open deadline, if there is one (once per deadline)."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is None:
        return
    held = getattr(conn, _GUARD, None)
    if held is None or held[0] is not deadline:
        WATCHDOG.guard(deadline, conn, sock)


def release(conn: Any) -> None:
    """Take a connection out of its deadline: it goes back to the pool, for another call."""
    if getattr(conn, _GUARD, None) is not None:
        WATCHDOG.release(conn, keep=False)


def closing(conn: Any) -> None:
    """Note that a connection closes: its socket stays under the deadline (an answer may still be read from
    it, as after `Connection: close`), and a new socket of the connection is guarded afresh."""
    if getattr(conn, _GUARD, None) is not None:
        WATCHDOG.release(conn, keep=True)


class Watchdog:
    """The one thread of a process that shuts down the sockets of waits past their deadline."""

    COMPACT_AT = 256  # closed deadlines left in the queue before it is rebuilt without them

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._stale = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: Deadline) -> None:
        """Open a deadline: from now on its sockets are shut down at `deadline.at`."""
        deadline.at = time.monotonic() + deadline.seconds
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="portico-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._queue, (deadline.at, next(self._order), deadline))
            deadline.queued = True
            if self._queue[0][2] is deadline:
                self._wake.notify()  # the watchdog sleeps until the earliest deadline; this one is earlier

    def disarm(self, deadline: Deadline) -> None:
        """Close a deadline: its sockets are no longer shut down, and the duplicates are let go."""
        with self._lock:
            deadline.closed = True
            for spare in deadline.socks:
                os.close(spare)
            deadline.socks.clear()
            if deadline.queued:
                self._stale += 1
                if self._stale >= self.COMPACT_AT and self._stale * 2 > len(self._queue):
                    self._queue = [entry for entry in self._queue if not entry[2].closed]
                    heapq.heapify(self._queue)
                    self._stale = 0

    def guard(self, deadline: Deadline, conn: Any, sock: socket.socket) -> None:
        """Watch a duplicate of the connection's socket until the deadline closes or the connection is let go."""
        spare = os.dup(sock.fileno())
        with self._lock:
            self._release(conn)
            deadline.socks.append(spare)
            setattr(conn, _GUARD, (deadline, spare))
            if deadline.expired:
                _shut(spare)

    def release(self, conn: Any, keep: bool) -> None:
        """Part the connection from its deadline; unless `keep`, stop watching its socket too."""
        with self._lock:
            self._release(conn, keep)

    def _release(self, conn: Any, keep: bool = False) -> None:
        held = getattr(conn, _GUARD, None)
        if held is None:
            return
        setattr(conn, _GUARD, None)
        deadline, spare = held
        if not keep and spare in deadline.socks:
            deadline.socks.remove(spare)
            os.close(spare)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                queue = self._queue
                while queue and (queue[0][2].closed or queue[0][0] <= now):
                    deadline = heapq.heappop(queue)[2]
                    deadline.queued = False
                    if deadline.closed:
                        self._stale = max(0, self._stale - 1)
                    else:
                        deadline.expired = True
                        for spare in deadline.socks:
                            _shut(spare)
                self._wake.wait(queue[0][0] - now if queue else None)


def _shut(spare: int) -> None:
    """Shut the socket down both ways: a read, write or handshake waiting on it, through any descriptor, ends."""
    try:
        sock = socket.socket(fileno=spare)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the host: the wait is over anyway
    finally:
        sock.detach()  # the descriptor stays the deadline's, closed when the deadline closes


def _after_fork() -> None:
    """Start over in a forked child: the parent's thread did not come along, and its lock may be held."""
    global WATCHDOG
    WATCHDOG = Watchdog()


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=_after_fork)
