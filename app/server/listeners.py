"""The addresses gunicorn really listens on, in the form of a bind address ("host:port", "unix:path")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def address_of(name: Any) -> str:
    """Return a socket name (getsockname(), or one of gunicorn's parsed binds) as a bind address."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if isinstance(name, str):
        return name if name.startswith("unix:") else f"unix:{name}"
    host, port = str(name[0]), name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_addresses(listeners: Iterable[Any], configured: Iterable[Any] = ()) -> list[str]:
    """Return the listeners' addresses; the configured binds when the master holds none (reuse_port)."""
    names = [listener.getsockname() for listener in listeners] or list(configured)
    return [address_of(name) for name in names]
