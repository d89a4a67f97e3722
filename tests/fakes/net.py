"""Loopback ports for the test servers, the rigs and `make demo`.

By default a port is any free ephemeral one. With PORTICO_TEST_PORT_BASE set (README), ports come from
base .. base+PORT_SPAN-1 instead, so a run can sit beside another gateway on the same machine: each process hands
them out in increasing order, skips ports something listens on, and claims each one with a lock on one byte of a
shared lock file, so two runs (or the demo beside the tests) never get the same port. The claims last as long as the
process; the kernel drops them when it ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading

PORT_BASE_ENV = "PORTICO_TEST_PORT_BASE"
PORT_SPAN = 1000  # past the end the count starts again at the base, skipping ports still in use

_lock = threading.Lock()
_next: dict[int, int] = {}  # base -> offset of the next port to try, in this process
_handed_out: set[int] = set()  # ports this process gave to a server: their claims stay even when they are busy
_claims_fd: int | None = None


def port_base() -> int | None:
    """Return the first port of the range from PORTICO_TEST_PORT_BASE, or None when it is not set."""
    raw = os.environ.get(PORT_BASE_ENV, "").strip()
    if not raw:
        return None
    highest = 65536 - PORT_SPAN
    if not raw.isdigit() or not 1024 <= int(raw) <= highest:
        raise ValueError(f"{PORT_BASE_ENV} must be a port from 1024 to {highest} (ports base .. base+{PORT_SPAN - 1} "
                         f"are used), not {raw!r}")
    return int(raw)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now, for a server started next (often in a child process)."""
    base = port_base()
    if base is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    return _next_in_range(base)


def listen_port() -> int:
    """Return the port for a loopback socket bound here and now: 0 (the kernel picks) unless a range is set."""
    base = port_base()
    return 0 if base is None else _next_in_range(base)


def _next_in_range(base: int) -> int:
    """Hand out the next port of the range that no other process claimed and nothing listens on."""
    with _lock:
        for _ in range(PORT_SPAN):
            offset = _next.get(base, 0)
            _next[base] = (offset + 1) % PORT_SPAN
            port = base + offset
            if _claim(port):
                if _bindable(port):
                    _handed_out.add(port)
                    return port
                if port not in _handed_out:
                    _release(port)
    raise RuntimeError(f"no free port in {base} .. {base + PORT_SPAN - 1} ({PORT_BASE_ENV}): "
                       "every one is in use or claimed by another test run")


def _claims() -> int:
    """Open (once per process) the lock file whose byte N stands for port N."""
    global _claims_fd
    if _claims_fd is None:
        path = os.path.join(tempfile.gettempdir(), f"portico-test-ports-{os.getuid()}.lock")
        _claims_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return _claims_fd


def _claim(port: int) -> bool:
    """Lock the port's byte; False when another process holds it (this process may take its own again)."""
    try:
        fcntl.lockf(_claims(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
    except OSError:
        return False
    return True


def _release(port: int) -> None:
    """Give the port's claim back."""
    fcntl.lockf(_claims(), fcntl.LOCK_UN, 1, port, os.SEEK_SET)


def _bindable(port: int) -> bool:
    """Tell whether nothing listens on (or still holds) 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
