"""Tests for the custom-host SSRF policy (app.http.hosts)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from app.errors import InvalidCustomHost
from app.http.hosts import HostPolicy, PinnedHost

Resolver = Callable[..., list]
# Python 3.13 prints IPv4-mapped addresses as ::ffff:a.b.c.d; 3.11 in hex.
MAPPED_8888 = str(ipaddress.ip_address("::ffff:8.8.8.8"))
MAPPED_LOOPBACK = str(ipaddress.ip_address("::ffff:127.0.0.1"))


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    """Return a getaddrinfo stand-in answering from `table`; unknown names do not resolve."""

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [_info(address, port) for address in table[host]]

    return resolve


def _info(address: str, port: int) -> tuple:
    """Return one getaddrinfo result for `address`."""
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def no_resolver(host: str, *args: object) -> list:
    """Fail the test if a check resolves a name it should not."""
    raise AssertionError(f"unexpected resolution of {host!r}")


PUBLIC = fake_resolver({
    "api.example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:4700::1111"],
    "dual.example.com": ["93.184.216.34", "2606:4700::1111"],
    "loop.example.com": ["127.0.0.1"],
    "meta.example.com": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.5"],
    "mixed6.example.com": ["2606:4700::1111", "fd00::1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "internal.example.com": ["10.1.2.3"],
    "a.svc.cluster.local": ["10.96.0.1"],
    "weird.example.com": ["not-an-ip"],
})


def refusal(policy: HostPolicy, url: str) -> str:
    """Return the reason `policy` gives for refusing `url`."""
    with pytest.raises(InvalidCustomHost) as info:
        policy.check(url)
    error = info.value
    assert error.status == 400
    assert error.errors is not None and len(error.errors) == 1
    assert error.message == f"Invalid custom host: {error.errors[0]}"  # SDKs show the message only
    return error.errors[0]


# --- URL syntax ---------------------------------------------------------------------------------

SYNTAX_REFUSED = [
    ("ftp://files.example.com", "scheme must be http or https"),
    ("file:///etc/passwd", "scheme must be http or https"),
    ("gopher://127.0.0.1:6379/_", "scheme must be http or https"),
    ("api.example.com/v1", "scheme must be http or https"),
    ("//api.example.com", "scheme must be http or https"),
    ("http:/api.example.com", "scheme must be http or https"),
    ("", "empty"),
    ("https://user@api.example.com", "userinfo is not allowed"),
    ("https://user:pw@api.example.com", "userinfo is not allowed"),
    ("https://api.example.com@127.0.0.1", "userinfo is not allowed"),
    ("https://:@api.example.com", "userinfo is not allowed"),
    ("https://api.example.com/v1#frag", "fragment is not allowed"),
    ("https://api.example.com#@127.0.0.1", "fragment is not allowed"),
    ("https://api.example.com/v1?x=1", "query string is not allowed"),
    ("https://api.example.com?", "query string is not allowed"),
    ("https://api.exa mple.com", "whitespace"),
    (" https://api.example.com", "whitespace"),
    ("https://api.example.com\n", "whitespace"),
    ("https://api.example.com\t.evil", "whitespace"),
    ("https://api.example.com\x00", "control characters"),
    ("https://api.example.com\u200b", "control characters"),
    ("https://api.example.com\\@127.0.0.1", "backslash"),
    ("https://api%2eexample.com", "'%'"),
    ("https://127.0.0.1%2f", "'%'"),
    ("https://[fe80::1%25eth0]", "zone id"),
    ("https://[fe80::1%eth0]:443", "zone id"),
    ("https://", "no host name"),
    ("https:///v1", "no host name"),
    ("https://:443", "no host name"),
    ("https://.", "no host name"),
    ("https://api.example.com:0", "port must be a number from 1 to 65535"),
    ("https://api.example.com:65536", "port must be a number from 1 to 65535"),
    ("https://api.example.com:99999999999", "port must be a number from 1 to 65535"),
    ("https://api.example.com:http", "port must be a number from 1 to 65535"),
    ("https://api.example.com:", "port must be a number from 1 to 65535"),
    ("https://api.example.com:-1", "port must be a number from 1 to 65535"),
    ("https://api.example.com:８０", "port must be a number from 1 to 65535"),
    ("https://api.example.com:80:81", "brackets"),
    ("https://::1", "brackets"),
    ("https://[::1", "unclosed"),
    ("https://[::1]x", "text after"),
    ("https://[not-v6]", "invalid IPv6 address"),
    ("https://[127.0.0.1]", "invalid IPv6 address"),
    ("https://exa_mple..com", "invalid host name"),
    ("https://api.example.com..", "invalid host name"),
    ("https://ex!ample.com", "invalid host name"),
    ("https://ex*ample.com", "invalid host name"),
    ("https://１２７.０.０.１", "must be ASCII"),
    ("https://bücher.example", "must be ASCII"),
    ("https://256.0.0.1", "invalid IPv4 address"),
    ("https://1.2.3.4.5", "invalid IPv4 address"),
    ("https://4294967296", "invalid IPv4 address"),
    ("https://0x100000000", "invalid IPv4 address"),
    ("https://08", "invalid IPv4 address"),
    ("https://a." + "b" * 64, "invalid host name"),
    ("https://" + "a." * 127 + "com", "longer than 253"),
]


@pytest.mark.parametrize(("url", "fragment"), SYNTAX_REFUSED)
def test_malformed_custom_hosts_are_refused(url: str, fragment: str) -> None:
    assert fragment in refusal(HostPolicy(resolver=PUBLIC), url)


def test_userinfo_password_is_never_echoed() -> None:
    for url in ("https://user:s3cret@api.example.com", "https://s3cret@127.0.0.1",
                "ftp://user:s3cret@x", "https://user:s3cret@x/v1?q#f", "https://user:s3cret@x:bad"):
        assert "s3cret" not in refusal(HostPolicy(resolver=PUBLIC), url)


def test_long_urls_are_echoed_shortened() -> None:
    reason = refusal(HostPolicy(resolver=PUBLIC), "http://127.0.0.1/" + "a" * 1000)
    assert len(reason) < 400
    assert "a loopback address" in reason


# --- refused addresses --------------------------------------------------------------------------

ADDRESS_REFUSED = [
    # IPv4 ranges
    ("http://127.0.0.1", "127.0.0.1, a loopback address"),
    ("http://127.255.255.254:8080", "a loopback address"),
    ("http://10.0.0.1", "10.0.0.1, a private address"),
    ("http://172.16.0.1", "a private address"),
    ("http://172.31.255.255", "a private address"),
    ("http://192.168.1.1", "a private address"),
    ("http://169.254.169.254", ("custom host 'http://169.254.169.254' resolves to 169.254.169.254, "
                               "a link-local address")),
    ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
    ("http://100.64.0.1", "a carrier-grade NAT address"),
    ("http://100.127.255.254", "a carrier-grade NAT address"),
    ("http://0.0.0.0", "0.0.0.0, a 'this network' address"),
    ("http://0.1.2.3", "a 'this network' address"),
    ("http://224.0.0.1", "a multicast address"),
    ("http://239.255.255.250", "a multicast address"),
    ("http://240.0.0.1", "a reserved address"),
    ("http://255.255.255.255", "the broadcast address"),
    ("http://198.18.0.1", "non-public"),
    ("http://192.0.2.1", "non-public"),
    # numeric tricks
    ("http://2130706433", "127.0.0.1, a loopback address"),
    ("http://0x7f000001", "127.0.0.1, a loopback address"),
    ("http://0X7F000001", "127.0.0.1, a loopback address"),
    ("http://0177.0.0.1", "127.0.0.1, a loopback address"),
    ("http://0177.0.0.01", "127.0.0.1, a loopback address"),
    ("http://127.1", "127.0.0.1, a loopback address"),
    ("http://127.0.1", "127.0.0.1, a loopback address"),
    ("http://10.1", "10.0.0.1, a private address"),
    ("http://0x7f.1", "127.0.0.1, a loopback address"),
    ("http://0x7f.0.0.0x1", "127.0.0.1, a loopback address"),
    ("http://0xa9.0xfe.0xa9.0xfe", "169.254.169.254, a link-local address"),
    ("http://0251.0376.0251.0376", "169.254.169.254, a link-local address"),
    ("http://2852039166", "169.254.169.254, a link-local address"),
    ("http://0", "0.0.0.0, a 'this network' address"),
    ("http://127.0.0.1.", "a loopback address"),
    ("http://0x7f000001.", "a loopback address"),
    # IPv6
    ("http://[::1]", "::1, a loopback address"),
    ("http://[0:0:0:0:0:0:0:1]:8080", "::1, a loopback address"),
    ("http://[::]", "the unspecified address"),
    ("http://[fc00::1]", "a unique local (private) address"),
    ("http://[fd12:3456::1]", "a unique local (private) address"),
    ("http://[fe80::1]", "a link-local address"),
    ("http://[FE80::ABCD]", "a link-local address"),
    ("http://[fec0::1]", "a site-local address"),
    ("http://[ff02::1]", "a multicast address"),
    ("http://[2001:db8::1]", "non-public"),
    ("http://[2001::1]", "non-public"),  # Teredo
    # IPv6 forms embedding a refused IPv4 address
    ("http://[::ffff:127.0.0.1]", "an IPv4-mapped address of 127.0.0.1, a loopback address"),
    ("http://[::ffff:7f00:1]", "an IPv4-mapped address of 127.0.0.1, a loopback address"),
    ("http://[::ffff:169.254.169.254]", "IPv4-mapped address of 169.254.169.254, a link-local"),
    ("http://[::ffff:10.0.0.1]", "a private address"),
    ("http://[::ffff:0:127.0.0.1]", "an IPv4-translated address of 127.0.0.1"),
    ("http://[::127.0.0.1]", "an IPv4-compatible address of 127.0.0.1, a loopback address"),
    ("http://[::7f00:1]", "an IPv4-compatible address of 127.0.0.1"),
    ("http://[::0.0.0.2]", "a 'this network' address"),
    ("http://[64:ff9b::127.0.0.1]", "a NAT64 address of 127.0.0.1, a loopback address"),
    ("http://[64:ff9b::a9fe:a9fe]", "a NAT64 address of 169.254.169.254"),
    ("http://[64:ff9b:1::1]", "a local-use NAT64 address"),
    ("http://[2002:7f00:1::]", "a 6to4 address of 127.0.0.1, a loopback address"),
    ("http://[2002:a9fe:a9fe::1]", "a 6to4 address of 169.254.169.254"),
    ("http://[2002:c0a8:101::1]", "a 6to4 address of 192.168.1.1, a private address"),
]


@pytest.mark.parametrize(("url", "fragment"), ADDRESS_REFUSED)
def test_internal_addresses_are_refused(url: str, fragment: str) -> None:
    reason = refusal(HostPolicy(resolver=no_resolver), url)
    assert fragment in reason
    assert "resolves to" in reason


NAMES_REFUSED = [
    ("https://loop.example.com", ("custom host 'https://loop.example.com' resolves to 127.0.0.1, "
                                 "a loopback address")),
    ("https://meta.example.com/v1", "169.254.169.254, a link-local address"),
    ("https://mixed.example.com", "10.0.0.5, a private address"),
    ("https://mixed6.example.com", "fd00::1, a unique local (private) address"),
    ("https://mapped.example.com", "IPv4-mapped address of 127.0.0.1"),
    ("https://LOOP.Example.COM.", "a loopback address"),
    ("https://nowhere.example.com", "custom host 'https://nowhere.example.com' does not resolve"),
    ("https://weird.example.com", "not an IP address"),
]


@pytest.mark.parametrize(("url", "fragment"), NAMES_REFUSED)
def test_names_resolving_to_internal_addresses_are_refused(url: str, fragment: str) -> None:
    assert fragment in refusal(HostPolicy(resolver=PUBLIC), url)


@pytest.mark.parametrize("url", ["http://localhost", "http://localhost.:8080", "http://LOCALHOST/v1"])
def test_localhost_is_refused_with_the_real_resolver(url: str) -> None:
    reason = refusal(HostPolicy(), url)
    assert "a loopback address" in reason or "does not resolve" in reason


def test_resolver_returning_nothing_does_not_resolve() -> None:
    policy = HostPolicy(resolver=lambda *args, **kwargs: [])
    assert "does not resolve" in refusal(policy, "https://empty.example.com")


def test_resolver_raising_unicode_error_does_not_resolve() -> None:
    def resolver(*args: object) -> list:
        raise UnicodeError("label too long")

    assert "does not resolve" in refusal(HostPolicy(resolver=resolver), "https://x.example.com")


# --- accepted hosts -----------------------------------------------------------------------------

ACCEPTED = [
    ("https://8.8.8.8", PinnedHost("https://8.8.8.8", "https", "8.8.8.8", 443, "8.8.8.8")),
    ("http://1.1.1.1:8080/v1/", PinnedHost("http://1.1.1.1:8080/v1", "http", "1.1.1.1", 8080, "1.1.1.1")),
    ("https://134744072", PinnedHost("https://8.8.8.8", "https", "8.8.8.8", 443, "8.8.8.8")),
    ("https://0x08080808:443", PinnedHost("https://8.8.8.8", "https", "8.8.8.8", 443, "8.8.8.8")),
    ("https://[2606:4700::1111]", PinnedHost("https://[2606:4700::1111]", "https", "2606:4700::1111",
                                             443, "2606:4700::1111")),
    ("https://[2606:4700:0:0::1111]:8443/v1",
     PinnedHost("https://[2606:4700::1111]:8443/v1", "https", "2606:4700::1111", 8443, "2606:4700::1111")),
    ("https://[::ffff:8.8.8.8]", PinnedHost(f"https://[{MAPPED_8888}]", "https", MAPPED_8888, 443,
                                            MAPPED_8888)),
    ("https://[2002:808:808::1]", PinnedHost("https://[2002:808:808::1]", "https", "2002:808:808::1", 443,
                                             "2002:808:808::1")),
    ("https://api.example.com/v1", PinnedHost("https://api.example.com/v1", "https", "api.example.com", 443,
                                              "93.184.216.34")),
    ("HTTPS://API.Example.com.:443/v1//", PinnedHost("https://api.example.com/v1", "https", "api.example.com",
                                                    443, "93.184.216.34")),
    ("http://api.example.com:80", PinnedHost("http://api.example.com", "http", "api.example.com", 80,
                                             "93.184.216.34")),
    ("https://api.example.com:8443/openai/v1/@x",
     PinnedHost("https://api.example.com:8443/openai/v1/@x", "https", "api.example.com", 8443,
                "93.184.216.34")),
    ("https://v6.example.com", PinnedHost("https://v6.example.com", "https", "v6.example.com", 443,
                                          "2606:4700::1111")),
    ("https://dual.example.com", PinnedHost("https://dual.example.com", "https", "dual.example.com", 443,
                                            "93.184.216.34")),
]


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_public_hosts_are_accepted_and_pinned(url: str, expected: PinnedHost) -> None:
    assert HostPolicy(resolver=PUBLIC).check(url) == expected


def test_ip_literals_are_not_resolved() -> None:
    assert HostPolicy(resolver=no_resolver).check("https://8.8.8.8").address == "8.8.8.8"


def test_the_resolver_is_asked_for_the_host_without_trailing_dot_and_the_port() -> None:
    seen: list[tuple] = []

    def resolver(host: str, port: int, *args: object) -> list:
        seen.append((host, port))
        return [_info("93.184.216.34", port)]

    HostPolicy(resolver=resolver).check("http://API.example.com.:8080")
    assert seen == [("api.example.com", 8080)]


# --- allow-list ---------------------------------------------------------------------------------

ALLOWED = [
    (["127.0.0.1"], "http://127.0.0.1:8000", "127.0.0.1"),
    (["127.0.0.1"], "http://2130706433", "127.0.0.1"),
    (["127.0.0.1"], "http://[::ffff:127.0.0.1]", MAPPED_LOOPBACK),
    (["::1"], "http://[::1]:11434", "::1"),
    (["[::1]"], "http://[::1]", "::1"),
    (["10.0.0.0/8"], "http://10.1.2.3:8080", "10.1.2.3"),
    (["10.0.0.0/8"], "http://internal.example.com", "10.1.2.3"),
    (["fd00::/8"], "http://[fd00::5]", "fd00::5"),
    (["169.254.169.254/32"], "http://169.254.169.254", "169.254.169.254"),
    (["localhost"], "http://localhost:11434", None),
    (["LOCALHOST."], "http://localhost.", None),
    (["localhost"], "http://LocalHost", None),
    (["*.svc.cluster.local"], "http://a.svc.cluster.local", None),
    (["*.svc.cluster.local"], "http://b.a.svc.cluster.local:8080/v1", None),
    (["*.svc.cluster.local."], "http://a.svc.cluster.local.", None),
    (["loop.example.com"], "https://loop.example.com", None),
]


@pytest.mark.parametrize(("allow", "url", "address"), ALLOWED)
def test_allow_list_admits_hosts(allow: list[str], url: str, address: str | None) -> None:
    assert HostPolicy(allow, resolver=PUBLIC).check(url).address == address


def test_hosts_allowed_by_name_are_not_resolved() -> None:
    policy = HostPolicy(["localhost", "*.svc.cluster.local"], resolver=no_resolver)
    assert policy.check("http://localhost:11434").base_url == "http://localhost:11434"
    assert policy.check("http://a.svc.cluster.local/v1").host == "a.svc.cluster.local"


NOT_ALLOWED = [
    (["*.svc.cluster.local"], "http://svc.cluster.local", "does not resolve"),
    (["*.svc.cluster.local"], "http://evilsvc.cluster.local", "does not resolve"),
    (["*.svc.cluster.local"], "http://10.96.0.1", "a private address"),
    (["127.0.0.1"], "http://127.0.0.2", "a loopback address"),
    (["10.0.0.0/8"], "http://192.168.0.1", "a private address"),
    (["10.0.0.0/8"], "http://mixed.example.com", "does not resolve"),
    (["10.0.0.0/8"], "http://loop.example.com", "a loopback address"),
    (["10.1.2.3"], "http://[::1]", "a loopback address"),
    (["internal.example.com"], "http://loop.example.com", "a loopback address"),
    (["localhost"], "http://127.0.0.1", "a loopback address"),
    (["api.example.com"], "http://x.api.example.com", "does not resolve"),
]


@pytest.mark.parametrize(("allow", "url", "fragment"), NOT_ALLOWED)
def test_allow_list_admits_nothing_else(allow: list[str], url: str, fragment: str) -> None:
    resolver = fake_resolver({"loop.example.com": ["127.0.0.1"], "mixed.example.com": []})
    assert fragment in refusal(HostPolicy(allow, resolver=resolver), url)


def test_allowed_cidr_covers_only_its_addresses_for_a_name() -> None:
    resolver = fake_resolver({"both.example.com": ["10.0.0.1", "192.168.0.1"],
                              "ok.example.com": ["10.0.0.1", "8.8.8.8"]})
    policy = HostPolicy(["10.0.0.0/8"], resolver=resolver)
    assert "192.168.0.1, a private address" in refusal(policy, "http://both.example.com")
    assert policy.check("http://ok.example.com").address == "10.0.0.1"


@pytest.mark.parametrize("entry", [
    "10.0.0.0/33", "10.1.2.3/8", "::/129", "fd00::1/8", "*.", "*", "*.*.example.com", "", "  ",
    "a..b", "ex ample.com", "https://example.com", "example.com:8080", "127.1", "0x7f000001",
    "256.0.0.1", "bücher.example", "[::1", "fe80::1%eth0",
])
def test_bad_allow_entries_raise_value_error_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match="custom_hosts.allow entry") as info:
        HostPolicy([entry])
    assert repr(entry) in str(info.value)


def test_allow_list_must_be_a_list() -> None:
    with pytest.raises(TypeError):
        HostPolicy("localhost")


# --- memo ---------------------------------------------------------------------------------------

class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolutions_are_memoised_for_the_ttl() -> None:
    calls: list[str] = []
    clock = Clock()
    policy = HostPolicy(resolver=fake_resolver({"api.example.com": ["93.184.216.34"]}, calls),
                        cache_ttl=30.0, clock=clock)
    policy.check("https://api.example.com/v1")
    clock.now += 29.0
    policy.check("https://API.example.com.:8443")
    assert calls == ["api.example.com"]
    clock.now += 1.0
    policy.check("https://api.example.com")
    assert calls == ["api.example.com", "api.example.com"]


def test_memoised_answers_are_still_checked() -> None:
    calls: list[str] = []
    policy = HostPolicy(resolver=fake_resolver({"loop.example.com": ["127.0.0.1"]}, calls), clock=Clock())
    for _ in range(2):
        assert "a loopback address" in refusal(policy, "https://loop.example.com")
    assert calls == ["loop.example.com"]


def test_failed_resolutions_are_not_memoised() -> None:
    calls: list[str] = []
    policy = HostPolicy(resolver=fake_resolver({}, calls), clock=Clock())
    for _ in range(2):
        refusal(policy, "https://nowhere.example.com")
    assert calls == ["nowhere.example.com"] * 2


def test_zero_ttl_disables_the_memo() -> None:
    calls: list[str] = []
    policy = HostPolicy(resolver=fake_resolver({"api.example.com": ["93.184.216.34"]}, calls),
                        cache_ttl=0, clock=Clock())
    policy.check("https://api.example.com")
    policy.check("https://api.example.com")
    assert len(calls) == 2


def test_memo_is_bounded() -> None:
    calls: list[str] = []
    table = {f"h{i}.example.com": ["93.184.216.34"] for i in range(5)}
    policy = HostPolicy(resolver=fake_resolver(table, calls), cache_size=2, clock=Clock())
    for i in range(5):
        policy.check(f"https://h{i}.example.com")
    policy.check("https://h4.example.com")  # still remembered
    policy.check("https://h0.example.com")  # evicted long ago
    assert calls == [f"h{i}.example.com" for i in range(5)] + ["h0.example.com"]
