"""Custom-host policy: refuse custom hosts that reach internal networks, and pin the checked address.

A client may replace a provider's base URL (``x-portkey-custom-host``, configs, catalog entries).
`HostPolicy.check` parses that URL strictly, decides whether the host may be reached, and returns a
`PinnedHost` naming the IP address it checked, so the caller connects to exactly that address and a
DNS answer cannot change between the check and the connection.

Refused unless allow-listed: loopback, private, link-local (cloud metadata), CGNAT, "this network",
multicast, reserved and broadcast IPv4; IPv6 loopback, unspecified, unique local, link-local,
site-local, multicast and other non-global ranges; IPv6 forms that embed a refused IPv4 address
(IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64, 6to4). IPv4 literals are decided the way the
C library reads them (`inet_aton`: decimal, hex, octal and short forms), so `2130706433`,
`0x7f000001`, `0177.0.0.1` and `127.1` are all 127.0.0.1.

The allow-list (``custom_hosts.allow`` in the gateway file) takes exact host names, ``*.suffix``
patterns, IP addresses and CIDR ranges.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.errors import InvalidCustomHost

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
V = TypeVar("V")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_CACHE_SIZE = 1024
# Reasons echo the client's URL; a bounded echo keeps error bodies and logs small.
_MAX_ECHO = 200

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Underscores are not valid in host names, but internal DNS uses them and resolvers accept them.
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# A last label that looks like a number makes the whole host an IPv4 literal (as in the WHATWG
# URL standard): if it is not a valid one, refuse it rather than hand it to a resolver.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")

_IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind) for net, kind in (
        ("0.0.0.0/8", "a 'this network' address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("169.254.0.0/16", "a link-local address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind) for net, kind in (
        ("::1/128", "a loopback address"),
        ("::/128", "the unspecified address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
        # Local-use NAT64 places the IPv4 address at operator-chosen offsets; refuse it whole.
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
    )
)

# Prefixes whose last 32 bits are an IPv4 address that the packet effectively reaches.
_IPV6_EMBEDDING: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind) for net, kind in (
        ("::ffff:0:0:0/96", "an IPv4-translated address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("::/96", "an IPv4-compatible address"),
    )
)


class UnresolvedHost(InvalidCustomHost):
    """A host name that has no address here (the caller may treat it as unreachable rather than refused)."""


@dataclass(frozen=True)
class PinnedHost:
    """A custom host that passed the policy, with the address to connect to."""

    base_url: str
    scheme: str
    host: str
    port: int
    address: str | None


@dataclass(frozen=True)
class _Target:
    """A parsed custom-host URL."""

    scheme: str
    host: str
    port: int
    path: str
    ip: IPAddress | None
    shown: str

    def pinned(self, address: str | None) -> PinnedHost:
        """Return the PinnedHost for this target, connecting to `address`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port != DEFAULT_PORTS[self.scheme] else ""
        return PinnedHost(f"{self.scheme}://{host}{port}{self.path}", self.scheme, self.host,
                          self.port, address)


@dataclass(frozen=True)
class _AllowList:
    """Parsed `custom_hosts.allow` entries."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    def allows_name(self, host: str) -> bool:
        """Tell whether a host name is allowed by an exact name or a `*.suffix` pattern."""
        return host in self.names or any(host.endswith("." + suffix) for suffix in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        """Tell whether an address lies in an allowed IP or CIDR entry."""
        return any(address.version == net.version and address in net for net in self.networks)


class _Memo(Generic[V]):
    """A small, bounded, thread-safe map with a TTL (host name → addresses, URL → pinned host)."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, host: str) -> V | None:
        """Return the value remembered for `host`, or None when absent or expired."""
        with self._lock:
            entry = self._entries.get(host)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[host]
                return None
            return entry[1]

    def put(self, host: str, addresses: V) -> None:
        """Remember a value for `host` for the TTL."""
        if self._ttl <= 0 or self._size <= 0:
            return
        with self._lock:
            now = self._clock()
            self._entries.pop(host, None)
            if len(self._entries) >= self._size:
                self._evict(now)
            self._entries[host] = (now + self._ttl, addresses)

    def _evict(self, now: float) -> None:
        """Drop expired entries, then the oldest ones, until there is room for one more."""
        for host in [h for h, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[host]
        while len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]


class HostPolicy:
    """Decide which custom hosts the gateway may reach, and pin the address it checked."""

    def __init__(self, allow: Sequence[str] = (), resolver: Callable[..., list] | None = None,
                 cache_ttl: float = 30.0, *, cache_size: int = DEFAULT_CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._allow = _parse_allow(allow)
        self._resolver = resolver or socket.getaddrinfo
        self._memo: _Memo[tuple[IPAddress, ...]] = _Memo(cache_ttl, cache_size, clock)
        # Accepted URLs, for the same TTL as a resolution: clients resend the same custom host on every call.
        self._accepted: _Memo[PinnedHost] = _Memo(cache_ttl, cache_size, clock)

    def check(self, url: str) -> PinnedHost:
        """Return the pinned host for `url`, or raise InvalidCustomHost saying why it is refused."""
        pinned = self._accepted.get(url)
        if pinned is None:
            pinned = self._check(url)
            self._accepted.put(url, pinned)
        return pinned

    def _check(self, url: str) -> PinnedHost:
        target = _parse_url(url)
        if target.ip is not None:
            return target.pinned(self._check_address(target, target.ip))
        if self._allow.allows_name(target.host):
            # Allowed by name: the operator vouches for wherever it resolves; connect normally.
            return target.pinned(None)
        addresses = self._resolve(target)
        for address in addresses:
            self._check_address(target, address)
        return target.pinned(str(addresses[0]))

    def _check_address(self, target: _Target, address: IPAddress) -> str:
        """Return `address` as text if it may be reached, else raise naming what it is."""
        refusal = self._refusal(address)
        if refusal is not None:
            raise InvalidCustomHost(f"custom host '{target.shown}' resolves to {address}, {refusal}")
        return str(address)

    def _refusal(self, address: IPAddress) -> str | None:
        """Return what kind of refused address this is, or None when it may be reached."""
        if self._allow.allows_address(address):
            return None
        if isinstance(address, ipaddress.IPv4Address):
            return _ipv4_refusal(address)
        loopback_or_unspecified = _first_match(address, _IPV6_REFUSED[:2])
        if loopback_or_unspecified is not None:
            return loopback_or_unspecified
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # The packet reaches the embedded IPv4 host, so that address decides.
            kind, ipv4 = embedded
            inner = self._refusal(ipv4)
            return None if inner is None else f"{kind} of {ipv4}, {inner}"
        return _ipv6_refusal(address)

    def _resolve(self, target: _Target) -> tuple[IPAddress, ...]:
        """Return every address `target.host` resolves to, memoised for the TTL."""
        addresses = self._memo.get(target.host)
        if addresses is not None:
            return addresses
        try:
            infos = self._resolver(target.host, target.port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        addresses = _addresses(target, infos)
        self._memo.put(target.host, addresses)
        return addresses


def _addresses(target: _Target, infos: list) -> tuple[IPAddress, ...]:
    """Return the distinct addresses of getaddrinfo results, in order; refuse when there are none."""
    found: dict[IPAddress, None] = {}
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 scope id
        try:
            found[ipaddress.ip_address(text)] = None
        except ValueError:
            raise InvalidCustomHost(
                f"custom host '{target.shown}' resolves to something that is not an IP address") from None
    if not found:
        raise UnresolvedHost(f"custom host '{target.shown}' does not resolve")
    return tuple(found)


def _first_match(address: IPAddress, table: Sequence[tuple[IPNetwork, str]]) -> str | None:
    """Return the kind of the first network in `table` holding `address`."""
    return next((kind for net, kind in table if address in net), None)


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    """Return what kind of non-public IPv4 address this is, or None when it is public."""
    kind = _first_match(address, _IPV4_REFUSED)
    if kind is None and not address.is_global:
        kind = "a reserved (non-public) address"
    return kind


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    """Return what kind of non-public IPv6 address this is, or None when it is public."""
    kind = _first_match(address, _IPV6_REFUSED)
    if kind is None and not address.is_global:
        kind = "a reserved (non-public) address"
    return kind


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """Return the IPv4 address an IPv6 address embeds, with the kind of embedding."""
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped address", address.ipv4_mapped
    if address.sixtofour is not None:
        return "a 6to4 address", address.sixtofour
    for net, kind in _IPV6_EMBEDDING:
        if address in net:
            return kind, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse_url(url: str) -> _Target:
    """Split a custom-host URL into its parts, refusing anything a base URL should not have."""
    _check_characters(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise InvalidCustomHost("custom host must be an absolute URL; scheme must be http or https")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidCustomHost("custom host scheme must be http or https")
    if "#" in rest:
        raise InvalidCustomHost("a fragment is not allowed in a custom host")
    if "?" in rest:
        raise InvalidCustomHost("a query string is not allowed in a custom host")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        # Checked before anything echoes the URL, so a password never reaches a reason.
        raise InvalidCustomHost("userinfo is not allowed in a custom host")
    shown = _shorten(f"{scheme}://{rest}")
    raw_host, port_text = _split_authority(authority)
    port = _parse_port(port_text, scheme)
    host, ip = _parse_host(raw_host, shown)
    return _Target(scheme, host, port, (slash + path).rstrip("/"), ip, shown)


def _check_characters(url: str) -> None:
    """Refuse whitespace, control characters and backslashes anywhere in the URL."""
    if not url:
        raise InvalidCustomHost("custom host is empty")
    # URL parsers silently drop tabs and newlines and some treat '\' as '/': refuse rather than guess.
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in url):
        raise InvalidCustomHost("whitespace and control characters are not allowed in a custom host")
    if "\\" in url:
        raise InvalidCustomHost("a backslash is not allowed in a custom host")


def _split_authority(authority: str) -> tuple[str, str | None]:
    """Split `host[:port]` or `[v6][:port]` into the host (brackets kept) and the port text."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidCustomHost("custom host has an unclosed '[' in its host")
        host, after = authority[:end + 1], authority[end + 1:]
        if after and not after.startswith(":"):
            raise InvalidCustomHost("custom host has text after its bracketed IPv6 address")
        return host, after[1:] if after else None
    if authority.count(":") > 1:
        raise InvalidCustomHost("an IPv6 address in a custom host must be written in brackets")
    host, colon, port = authority.partition(":")
    return host, port if colon else None


def _parse_port(text: str | None, scheme: str) -> int:
    """Return the explicit port, or the scheme default when there is none."""
    if text is None:
        return DEFAULT_PORTS[scheme]
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise InvalidCustomHost("custom host port must be a number from 1 to 65535")
    return int(text)


def _parse_host(raw: str, shown: str) -> tuple[str, IPAddress | None]:
    """Return the normalised host and its IP address when it is an IP literal."""
    if "%" in raw:
        # Percent-encoding and IPv6 zone ids ("fe80::1%25eth0") make the host mean different
        # things to different parsers.
        raise InvalidCustomHost("'%' (percent-encoding or an IPv6 zone id) is not allowed in a custom host")
    if raw.startswith("["):
        try:
            ipv6 = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise InvalidCustomHost(f"custom host '{shown}' has an invalid IPv6 address") from None
        return str(ipv6), ipv6
    host = _strip_dot(raw.lower())
    if not host:
        raise InvalidCustomHost("custom host has no host name")
    if not host.isascii():
        # IDNA mapping turns look-alikes (e.g. full-width digits) into other hosts: require punycode.
        raise InvalidCustomHost("custom host name must be ASCII (write internationalised names in punycode)")
    ipv4 = _ipv4_literal(host)
    if ipv4 is not None:
        return str(ipv4), ipv4
    problem = _name_problem(host)
    if problem:
        raise InvalidCustomHost(f"custom host '{shown}' {problem}")
    return host, None


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address `host` denotes in any form inet_aton accepts, else None."""
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _name_problem(host: str) -> str | None:
    """Return what makes `host` an invalid host name, or None when it is valid."""
    if len(host) > 253:
        return "has a host name longer than 253 characters"
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "has an invalid host name"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "has an invalid IPv4 address"
    return None


def _strip_dot(host: str) -> str:
    """Drop one trailing dot: `localhost.` and `localhost` are the same host."""
    return host.removesuffix(".")


def _shorten(text: str) -> str:
    """Bound how much of a client's URL a reason echoes."""
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."


def _parse_allow(entries: Sequence[str]) -> _AllowList:
    """Parse allow-list entries, raising ValueError that names a bad entry."""
    if isinstance(entries, str):
        raise TypeError("custom_hosts.allow must be a list of entries, not a string")
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for entry in entries:
        parsed = _parse_allow_entry(entry)
        if not isinstance(parsed, str):
            networks.append(parsed)
        elif parsed.startswith("*."):
            suffixes.append(parsed[2:])
        else:
            names.add(parsed)
    return _AllowList(frozenset(names), tuple(suffixes), tuple(networks))


def _parse_allow_entry(entry: str) -> str | IPNetwork:
    """Return the normalised name or `*.suffix` pattern, or the network, of one allow-list entry."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"invalid custom_hosts.allow entry {entry!r}: expected a non-empty string")
    text = entry.strip().lower()
    if "/" in text:
        try:
            # strict: "10.1.2.3/8" is more likely a typo than a wish to allow all of 10/8.
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"invalid custom_hosts.allow entry {entry!r}: {exc}") from None
    address = _allow_address(text)
    if address is not None:
        return ipaddress.ip_network(address)
    prefix = "*." if text.startswith("*.") else ""
    name = _strip_dot(text[len(prefix):])
    if not name or _name_problem(name):
        raise ValueError(f"invalid custom_hosts.allow entry {entry!r}: expected a host name, "
                         "a '*.suffix' pattern, an IP address or a CIDR range")
    return prefix + name


def _allow_address(text: str) -> IPAddress | None:
    """Return the IP address an allow-list entry names (IPv6 with or without brackets), else None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return None  # a zone id would allow an address on one interface only; refuse the entry
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
