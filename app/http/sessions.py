"""Per-worker pooled upstream sessions, with DNS pinning for checked custom hosts."""

from __future__ import annotations

import http.cookiejar
import os
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter

DEFAULT_POOLS = 32
DEFAULT_POOLSIZE = 64


class PinningAdapter(HTTPAdapter):
    """An adapter that connects to the address the custom-host policy checked, not a fresh lookup."""

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
