"""Client identity: which hop of X-Forwarded-For / Forwarded is the client, and [proxy] trusted_proxies."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.http.client_ip import TrustedProxies, client_address, forwarded_for, from_environ, parse_trusted
from app.settings import SettingsError, load_settings

TRUSTED = parse_trusted(["127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48"])
NONE = TrustedProxies()


def who(peer: str, xff: str | None = None, forwarded: str | None = None,
        trusted: TrustedProxies = TRUSTED) -> str:
    return client_address(peer, xff, forwarded, trusted)


# -- the walk over X-Forwarded-For ---------------------------------------------------------------------------


def test_a_trusted_peer_names_the_rightmost_untrusted_hop() -> None:
    assert who("127.0.0.1", "203.0.113.7") == "203.0.113.7"
    # A client's own X-Forwarded-For sits to the left of what the proxy appended: never believed.
    assert who("127.0.0.1", "1.1.1.1, 203.0.113.7") == "203.0.113.7"


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert who("198.51.100.9", "1.1.1.1") == "198.51.100.9"
    assert who("198.51.100.9", forwarded="for=1.1.1.1") == "198.51.100.9"


def test_without_trusted_proxies_a_spoofed_header_is_ignored() -> None:
    assert who("127.0.0.1", "1.1.1.1", "for=2.2.2.2", trusted=NONE) == "127.0.0.1"
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1", "HTTP_FORWARDED": "for=2.2.2.2"}
    assert from_environ(environ, NONE) == "127.0.0.1"
    assert from_environ({**environ, "REMOTE_ADDR": "::ffff:192.0.2.1"}, NONE) == "192.0.2.1"


def test_cidr_ranges_are_walked_through_hop_by_hop() -> None:
    # client -> edge proxy 10.1.2.3 -> nginx 10.9.9.9 -> gateway; both proxies trusted via 10.0.0.0/8.
    assert who("10.9.9.9", "1.1.1.1, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert who("10.9.9.9", "203.0.113.7, 11.0.0.1, 10.1.2.3") == "11.0.0.1"  # 11/8 is outside the range


def test_every_hop_trusted_gives_the_leftmost() -> None:
    assert who("127.0.0.1", "10.0.0.5, 10.0.0.6") == "10.0.0.5"
    assert who("127.0.0.1", "") == "127.0.0.1"  # an empty header: the peer itself


def test_many_hops() -> None:
    hops = ", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(500))
    assert who("127.0.0.1", "198.51.100.1, " + hops) == "198.51.100.1"
    assert who("127.0.0.1", hops) == "10.0.0.1"


def test_ipv6_peers_hops_and_ranges() -> None:
    assert who("2001:db8:ffff::1", "2001:DB8::0:1") == "2001:db8::1"  # written canonically
    assert who("2001:db8:ffff::1", "[2001:db8::1]:4711") == "2001:db8::1"
    assert who("::1", "2001:db8::1") == "::1"  # ::1 is not trusted here
    assert who("::ffff:127.0.0.1", "203.0.113.7") == "203.0.113.7"  # IPv4-mapped peer is 127.0.0.1
    assert who("2001:db8:ffff::1", "2001:db8:ffff::2") == "2001:db8:ffff::2"  # all trusted: the leftmost


def test_ports_are_not_part_of_the_address() -> None:
    assert who("127.0.0.1", "203.0.113.7:5555") == "203.0.113.7"
    assert who("127.0.0.1", "203.0.113.7:5555, 10.0.0.1:80") == "203.0.113.7"


@pytest.mark.parametrize("garbage", ["not-an-ip", "1.2.3", "999.1.1.1", "1.2.3.4:port", "[1.2.3.4]", "[::1",
                                     "'; DROP TABLE requests; --", "<script>", "x" * 5000, "\u00e9\u00e9"])
def test_a_garbage_hop_ends_the_walk_as_unknown(garbage: str) -> None:
    assert who("127.0.0.1", f"1.1.1.1, {garbage}") == "unknown"
    assert who("127.0.0.1", f"{garbage}, 10.0.0.1") == "unknown"
    # Left of an untrusted hop, garbage is never even looked at.
    assert who("127.0.0.1", f"{garbage}, 203.0.113.7") == "203.0.113.7"


def test_stray_commas_hide_nobody() -> None:
    assert who("127.0.0.1", "203.0.113.7,, ,") == "203.0.113.7"


# -- Forwarded (RFC 7239) ------------------------------------------------------------------------------------


def test_forwarded_for_is_walked_like_x_forwarded_for() -> None:
    assert who("127.0.0.1", forwarded="for=1.1.1.1, for=203.0.113.7;proto=https;by=10.0.0.1") == "203.0.113.7"
    assert who("127.0.0.1", forwarded='for="203.0.113.7:4711"') == "203.0.113.7"
    assert who("127.0.0.1", forwarded='For="[2001:db8::1]:4711";proto=http, for=10.0.0.3') == "2001:db8::1"
    assert who("127.0.0.1", forwarded="for=10.0.0.2, for=10.0.0.3") == "10.0.0.2"


def test_obfuscated_and_unknown_nodes_name_the_client_as_sent() -> None:
    assert who("127.0.0.1", forwarded="for=1.1.1.1, for=_hidden") == "_hidden"
    assert who("127.0.0.1", forwarded='for="_gazonk"') == "_gazonk"
    assert who("127.0.0.1", forwarded="for=unknown;proto=https") == "unknown"
    assert who("127.0.0.1", forwarded="proto=https;by=10.0.0.1") == "unknown"  # an element with no for=
    assert who("127.0.0.1", "_hidden") == "_hidden"  # some proxies put obfuscated names in X-Forwarded-For too


@pytest.mark.parametrize("header", ["for", "for=", 'for="1.1.1.1', "for=1.1.1.1 2.2.2.2", 'for=a"b',
                                    "=1.1.1.1", 'for="[2001:db8::1]:port!"', "for=_" + "x" * 200])
def test_a_garbled_forwarded_element_is_unknown(header: str) -> None:
    assert who("127.0.0.1", forwarded=header) == "unknown"


def test_quoted_commas_and_semicolons_stay_inside_their_element() -> None:
    assert forwarded_for('for=1.1.1.1;ext="a,b;c", for=2.2.2.2') == ["1.1.1.1", "2.2.2.2"]
    assert who("127.0.0.1", forwarded='for=203.0.113.7;ext="x, for=9.9.9.9"') == "203.0.113.7"


def test_x_forwarded_for_wins_when_both_are_present() -> None:
    # nginx appends to X-Forwarded-For and passes a client's own Forwarded along untouched.
    assert who("127.0.0.1", "203.0.113.7", "for=1.1.1.1") == "203.0.113.7"
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7", "HTTP_FORWARDED": "for=1.1.1.1"}
    assert from_environ(environ, TRUSTED) == "203.0.113.7"
    assert from_environ({**environ, "HTTP_X_FORWARDED_FOR": ""}, TRUSTED) == "127.0.0.1"


# -- the unix socket -----------------------------------------------------------------------------------------


def test_a_unix_socket_peer_is_trusted_only_when_listed() -> None:
    environ = {"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
    assert from_environ(environ, NONE) == "unix"
    assert from_environ(environ, TRUSTED) == "unix"
    assert from_environ(environ, parse_trusted(["unix"])) == "203.0.113.7"
    assert from_environ({"REMOTE_ADDR": ""}, parse_trusted(["unix"])) == "unix"


# -- [proxy] trusted_proxies ---------------------------------------------------------------------------------


def gateway_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(body)
    return str(path)


def test_trusted_proxies_are_read_from_the_gateway_file(tmp_path: Path) -> None:
    path = gateway_file(tmp_path, '[proxy]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1", "unix"]\n')
    trusted = load_settings({}, path=path).trusted_proxies
    assert who("10.3.3.3", "203.0.113.7", trusted=trusted) == "203.0.113.7"
    assert who("::1", "203.0.113.7", trusted=trusted) == "203.0.113.7"
    assert who("11.0.0.1", "203.0.113.7", trusted=trusted) == "11.0.0.1"
    assert not load_settings({}, path=gateway_file(tmp_path, "")).trusted_proxies


@pytest.mark.parametrize(("entry", "says"), [
    ('"10.0.0.0/33"', "'10.0.0.0/33' is not an IP address, a CIDR range"),
    ('"localhost"', "'localhost' is not an IP address"),
    ('"10.0.0.1/8"', "did you mean '10.0.0.0/8'?"),
    ('""', "must be a non-empty string"),
    ("8", "must be a non-empty string"),
])
def test_a_malformed_entry_stops_start_up_in_one_line_naming_the_key(tmp_path: Path, entry: str, says: str) -> None:
    path = gateway_file(tmp_path, f"[proxy]\ntrusted_proxies = [\"127.0.0.1\", {entry}]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path=path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: proxy.trusted_proxies")
    assert says in message


def test_trusted_proxies_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"proxy\.trusted_proxies: must be a list of strings"):
        load_settings({}, path=gateway_file(tmp_path, '[proxy]\ntrusted_proxies = "10.0.0.0/8"\n'))
