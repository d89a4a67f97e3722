"""The client's address: the peer, or the rightmost untrusted hop a trusted proxy reported (docs/observability.md)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A trusted_proxies entry that trusts connections through the gateway's unix socket (a unix peer has no address).
UNIX = "unix"
UNKNOWN = "unknown"
# RFC 7239 section 6.3: an obfuscated node name; bounded so a log line never carries an essay.
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]{1,63}")
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]{1,63}")


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed: addresses and ranges, and maybe the unix socket."""

    networks: tuple[Network, ...] = ()
    unix: bool = False

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix

    def trusts(self, address: Address) -> bool:
        """Tell whether address is one of the trusted proxies."""
        return any(address in network for network in self.networks)


def parse_trusted(entries: Iterable[str]) -> TrustedProxies:
    """Parse [proxy] trusted_proxies; raise ValueError naming the first bad entry."""
    networks: list[Network] = []
    unix = False
    for entry in entries:
        text = entry.strip()
        if text.lower() == UNIX:
            unix = True
            continue
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            raise ValueError(_bad_entry(text)) from None
        networks.append(_unmapped_network(network))
    return TrustedProxies(tuple(networks), unix)


def _bad_entry(text: str) -> str:
    """Say what is wrong with a trusted_proxies entry, with the range meant when only host bits are wrong."""
    try:
        meant = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not an IP address, a CIDR range (\"10.0.0.0/8\") or \"unix\""
    return f"{text!r} has bits set past its prefix length; did you mean {str(meant)!r}?"


def _unmapped_network(network: Network) -> Network:
    """Return an IPv4-mapped IPv6 range (::ffff:10.0.0.0/104) as the IPv4 range it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def from_environ(environ: Mapping[str, Any], trusted: TrustedProxies) -> str:
    """Return the client address of a WSGI request (docs/observability.md, Client address)."""
    peer = environ.get("REMOTE_ADDR") or ""
    if not trusted:
        # The common case pays no parsing: gunicorn writes the peer's address in its usual form.
        return _plain(peer) if peer else UNIX
    return client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), environ.get("HTTP_FORWARDED"), trusted)


def client_address(peer: str, x_forwarded_for: str | None, forwarded: str | None, trusted: TrustedProxies) -> str:
    """Return the client address: the peer, or, behind trusted proxies, the rightmost hop none of them is.

    X-Forwarded-For wins over Forwarded when both are present: nginx writes the first and passes a
    client's Forwarded along untouched, so believing Forwarded there would let any client name itself.
    When every hop is trusted, the leftmost is the client.
    """
    peer_address = address(peer)
    if peer_address is None:
        if peer or not trusted.unix:  # "": a unix socket, which has no address
            return _plain(peer) if peer else UNIX
        client = UNIX
    elif not trusted.trusts(peer_address):
        return str(peer_address)
    else:
        client = str(peer_address)
    if x_forwarded_for is not None:
        hops = [hop.strip() for hop in x_forwarded_for.split(",")]
    else:
        hops = forwarded_for(forwarded) if forwarded is not None else []
    for hop in reversed(hops):
        if hop == "":
            continue  # a stray comma hides nobody
        hop_address = address(hop)
        if hop_address is None:
            return node_name(hop)
        client = str(hop_address)
        if not trusted.trusts(hop_address):
            return client
    return client


def address(text: str | None) -> Address | None:
    """Return the IP address in a hop (`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:4711`, `::1`), or None."""
    if not text:
        return None
    host = text
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _PORT.fullmatch(port[1:]))):
            return None
    elif text.count(":") == 1:  # an IPv4 address with a port; a bare IPv6 address has two colons or more
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(port):
            return None
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return None
    if text.startswith("[") and parsed.version != 6:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def node_name(hop: str) -> str:
    """Return a hop that is no address as the client's name: an obfuscated identifier as sent, else `unknown`."""
    return hop if _OBFUSCATED.fullmatch(hop) else UNKNOWN


def _plain(peer: str) -> str:
    """Return the peer as gunicorn wrote it, an IPv4-mapped IPv6 address as its IPv4 address."""
    if peer.startswith("::ffff:"):
        parsed = address(peer)
        return str(parsed) if parsed is not None else peer
    return peer


def forwarded_for(header: str) -> list[str]:
    """Return the `for=` node of each element of a Forwarded header (RFC 7239), "" where an element has none.

    An element that does not parse counts as a hop with no address (its client is `unknown`).
    """
    hops: list[str] = []
    for element in _split(header, ","):
        node = ""
        for pair in _split(element, ";"):
            name, equals, value = pair.partition("=")
            if not equals:
                if pair.strip():
                    node = "?"  # not name=value: a garbled element
                continue
            if name.strip().lower() == "for":
                node = _unquoted(value.strip())
        hops.append(node or ("" if not element.strip() else UNKNOWN))
    return hops


def _split(text: str, separator: str) -> list[str]:
    """Split text on separator outside double quotes (a quoted IPv6 node holds colons, a quoted string anything)."""
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unquoted(value: str) -> str:
    """Return an RFC 7230 token or quoted-string value as its text; "?" when it is neither."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if '"' in value or not value:
        return "?"
    return value
