"""Transport failures in a few words: the root cause of a requests/urllib3 error, without URLs or secrets."""

from __future__ import annotations

import http.client
import socket
import ssl

import requests
import urllib3


def cause_of(err: BaseException) -> str:
    """Name the root cause of a transport failure in a few words, without URLs or secrets."""
    if caused_by(err, ConnectionRefusedError):
        return "connection refused"
    if caused_by(err, ConnectionResetError) or "reset" in str(err).lower():
        return "connection reset by peer"
    if caused_by(err, socket.gaierror) or "resolve" in str(err).lower():
        return "the host name does not resolve"
    if caused_by(err, ssl.SSLError):
        return "TLS handshake failed"
    if caused_by(err, socket.timeout, TimeoutError) or isinstance(err, requests.exceptions.Timeout):
        return "timed out"
    if caused_by(err, http.client.BadStatusLine, http.client.LineTooLong) or "BadStatusLine" in repr(err):
        return "the answer was not valid HTTP"
    if caused_by(err, http.client.RemoteDisconnected, http.client.IncompleteRead) \
            or isinstance(err, urllib3.exceptions.ProtocolError):
        return "the connection closed before a complete answer"
    return type(err).__name__


def caused_by(err: BaseException, *kinds: type[BaseException]) -> bool:
    """Return True when the error, or anything in its cause chain or args, is one of the kinds."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None),
                    *[a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return False
