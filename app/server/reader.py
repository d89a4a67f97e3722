"""The client socket as gunicorn's parser reads it: every read bounded by the request's deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


class ReadDeadline:
    """How long the rest of a request may take to arrive: a base allowance plus time per byte.

    The allowance grows with the declared length, or with the bytes received when no length was
    declared (chunked), so a large upload gets longer but a trickle cannot stretch it forever.
    """

    def __init__(self, base_s: float, expired: Callable[[ReadDeadline], Exception], declared: int = 0,
                 per_mib_s: float = 0.0) -> None:
        self.started = time.monotonic()
        self.base_s = base_s
        self.expired = expired
        self.declared = declared
        self.per_byte_s = per_mib_s / MIB
        self.received = 0
        self.tripped = False

    @property
    def allowed_s(self) -> float:
        """Return the whole time the request has, as of the bytes known now."""
        return self.base_s + max(self.declared, self.received) * self.per_byte_s

    def recv(self, sock: socket.socket, size: int) -> bytes:
        """Read from sock, waiting no longer than the deadline; past it raise `expired(self)` once, then b""."""
        if self.tripped:
            return b""  # a drain after the expiry stops at once; the connection is closed after the answer
        remaining = self.started + self.allowed_s - time.monotonic()
        if remaining <= 0:
            raise self._trip()
        previous = sock.gettimeout()
        sock.settimeout(remaining)
        try:
            data = sock.recv(size)
        except TimeoutError:
            raise self._trip() from None
        finally:
            sock.settimeout(previous)
        self.received += len(data)
        return data

    def _trip(self) -> Exception:
        self.tripped = True
        return self.expired(self)


class ClientReader:
    """A client socket whose reads obey the current `deadline` (none: plain reads); all else is the socket's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: ReadDeadline | None = None

    def recv(self, size: int) -> bytes:
        """Read as gunicorn's parser does, within the deadline if one is set."""
        deadline = self.deadline
        if deadline is None:
            return self.sock.recv(size)
        return deadline.recv(self.sock, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
