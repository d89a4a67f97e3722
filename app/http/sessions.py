"""Per-worker pooled upstream sessions, with DNS pinning for checked custom hosts."""

from __future__ import annotations

import http.cookiejar
import os
import socket
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from app.http import deadline

DEFAULT_POOLS = 32
DEFAULT_POOLSIZE = 64


class _GuardedConnection(HTTPConnection):
    """A connection whose socket is under the calling thread's deadline, from TCP connect to release."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        deadline.guard(self, sock)  # before the TLS handshake, so a trickled handshake is cut too
        return sock

    def putrequest(self, method: str, url: str, skip_host: bool = False,
                   skip_accept_encoding: bool = False) -> None:
        """Start a request; a kept-alive socket goes under this call's deadline first."""
        if self.sock is not None:
            deadline.guard(self, self.sock)
        super().putrequest(method, url, skip_host=skip_host, skip_accept_encoding=skip_accept_encoding)

    def close(self) -> None:
        """Close the connection; a new socket of it is guarded afresh."""
        deadline.closing(self)
        super().close()


class _GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    """The TLS connection under the calling thread's deadline."""


class _GuardedPool(HTTPConnectionPool):
    """A pool of connections under the calling thread's deadline."""

    ConnectionCls = _GuardedConnection

    def _put_conn(self, conn: Any) -> None:
        # A connection back in the pool belongs to the next call, not to this call's deadline.
        if conn is not None:
            deadline.release(conn)
        super()._put_conn(conn)


class _GuardedHTTPSPool(_GuardedPool, HTTPSConnectionPool):
    """A pool of TLS connections under the calling thread's deadline."""

    ConnectionCls = _GuardedHTTPSConnection


_GUARDED_POOLS = {"http": _GuardedPool, "https": _GuardedHTTPSPool}
_PLAIN_POOLS = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}


def _use_guarded_pools(manager: Any) -> Any:
    """Make a pool manager build connections that a deadline can cut (a SOCKS proxy's own pools stay)."""
    if manager.pool_classes_by_scheme == _PLAIN_POOLS:
        manager.pool_classes_by_scheme = _GUARDED_POOLS
    return manager


class PinningAdapter(HTTPAdapter):
    """An adapter that connects to the address the custom-host policy checked, not a fresh lookup.

    Its connections honour the deadline of app.http.deadline (docs/security.md: timeouts are deadlines).
    """

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """Make the pool manager, with connections under the calling thread's deadline."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _use_guarded_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Return the proxy's pool manager, with connections under the calling thread's deadline."""
        return _use_guarded_pools(super().proxy_manager_for(proxy, **proxy_kwargs))

    def get_connection_with_tls_context(self, request: requests.PreparedRequest, verify: Any,
                                        proxies: Any = None, cert: Any = None) -> Any:
        address = getattr(request, "pinned_address", None)
        if address is None:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        hostname = host_params["host"]
        if host_params["scheme"] == "https":
            # TLS still verifies and sends SNI for the name, while the socket goes to the checked address.
            pool_kwargs = {**pool_kwargs, "server_hostname": hostname,  # type: ignore[typeddict-unknown-key]
                           "assert_hostname": hostname}
        return self.poolmanager.connection_from_host(
            host=address, port=host_params["port"], scheme=host_params["scheme"], pool_kwargs=pool_kwargs)


class _RefuseAllCookies(http.cookiejar.DefaultCookiePolicy):
    """Cookie policy that stores nothing: one client's cookies must never reach another's call."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def new_session(pool_size: int = DEFAULT_POOLSIZE, trust_env: bool = False) -> requests.Session:
    """Return a session with pooled keep-alive connections and no adapter retries."""
    session = requests.Session()
    session.trust_env = trust_env
    session.cookies.set_policy(_RefuseAllCookies())
    # The pipeline's retry loop is the only retry; the adapter must never retry on its own.
    adapter = PinningAdapter(pool_connections=DEFAULT_POOLS, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.clear()
    return session


class SessionHolder:
    """Hands out one session per worker process, created lazily after the fork."""

    def __init__(self, pool_size: int, trust_env: bool) -> None:
        self.pool_size = pool_size
        self.trust_env = trust_env
        self._lock = threading.Lock()
        self._pid = -1
        self._session: requests.Session | None = None

    def get(self) -> requests.Session:
        """Return this process's session, making it on first use."""
        session, pid = self._session, os.getpid()
        if session is not None and self._pid == pid:
            return session
        with self._lock:
            if self._session is None or self._pid != pid:
                self._session = new_session(self.pool_size, self.trust_env)
                self._pid = pid
            return self._session
