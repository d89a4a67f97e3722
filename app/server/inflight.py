"""The calls a worker process is serving, so a shutdown can record the ones it cuts (docs/deploy.md, Shutdown).

A call is recorded by its own end (the answer sent, or the client gone) or, when the worker's graceful
period runs out first, by `cut_all`, which records it with status 499 and error `shutdown`: never both.
One slot per serving thread: a thread serves one call at a time, so a slot a call forgot to close is
replaced by the thread's next call and the registry never grows past the thread count. A stream the worker
relays on its event loop leaves its thread: `hand_off` moves its slot from the thread to the call itself,
and its end (or the shutdown) removes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_lock = threading.Lock()
_calls: dict[object, Call] = {}  # by serving thread, or by the call once handed off


class Call:
    """One in-flight call of one thread; `owner` is its context."""

    __slots__ = ("owner", "on_cut", "state")

    def __init__(self, owner: object, on_cut: Callable[[], None]) -> None:
        self.owner = owner
        self.on_cut = on_cut
        self.state = "open"  # "ended" once its own end recorded it, "cut" once the shutdown did

    def ends(self) -> bool:
        """Return True when the call's own end may record it (the shutdown has not cut it)."""
        with _lock:
            if self.state == "cut":
                return False
            self.state = "ended"
            return True

    def _cuts(self) -> bool:
        with _lock:
            if self.state != "open":
                return False
            self.state = "cut"
            return True


def begin(owner: object, on_cut: Callable[[], None]) -> Call:
    """Register the calling thread's call, recorded by on_cut if the worker has to cut it."""
    call = Call(owner, on_cut)
    with _lock:
        _calls[threading.get_ident()] = call
    return call


def current(owner: object) -> Call | None:
    """Return the calling thread's registered call for owner, if there is one."""
    call = _calls.get(threading.get_ident())
    return call if call is not None and call.owner is owner else None


def end(call: Call) -> None:
    """Drop call's slot: the calling thread's if it still holds call, or the one it was handed off to."""
    ident = threading.get_ident()
    with _lock:
        if _calls.get(ident) is call:
            del _calls[ident]
        _calls.pop(call, None)


def hand_off() -> None:
    """Detach the calling thread's call from the thread: it goes on elsewhere (the worker's event loop)."""
    with _lock:
        call = _calls.pop(threading.get_ident(), None)
        if call is not None:
            _calls[call] = call


def forget_thread() -> None:
    """Drop whatever the calling thread still has registered (its request is over)."""
    with _lock:
        _calls.pop(threading.get_ident(), None)


def cut_all() -> int:
    """Record every call still in flight as cut at shutdown; return how many were cut."""
    with _lock:
        calls = list(_calls.values())
        _calls.clear()
    cut = 0
    for call in calls:
        if call._cuts():
            call.on_cut()
            cut += 1
    return cut
