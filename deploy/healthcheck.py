"""Container health check: exit 0 when this gateway answers GET /healthz, 1 otherwise (docs/deploy.md)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys

DEFAULT_PORT = 8787
TIMEOUT_S = 4.0


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket (GATEWAY_BIND=unix:/path.sock)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP port."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(self.unix_path)


def connection_for(bind: str) -> http.client.HTTPConnection:
    """Return a connection to the address GATEWAY_BIND names; a wildcard host is reached on loopback."""
    if bind.startswith("unix:"):
        return _UnixConnection(bind[len("unix:"):])
    host, port = bind, DEFAULT_PORT
    if bind.startswith("["):  # [::1]:8787
        host, _, rest = bind[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    elif bind.count(":") == 1:
        host, _, number = bind.partition(":")
        port = int(number)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)


def main() -> int:
    """Ask /healthz once; print why when it fails (docker inspect shows the output)."""
    bind = os.environ.get("GATEWAY_BIND") or f"127.0.0.1:{DEFAULT_PORT}"
    try:
        conn = connection_for(bind)
        conn.request("GET", "/healthz")
        answer = conn.getresponse()
        body = answer.read()
        if answer.status == 200 and json.loads(body).get("status") == "ok":
            return 0
        print(f"healthcheck: /healthz on {bind} answered {answer.status}", file=sys.stderr)
    except (OSError, ValueError, http.client.HTTPException) as err:
        print(f"healthcheck: /healthz on {bind}: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
