"""Which headers go upstream and which come back (docs/decisions.md, Headers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from app.errors import BadRequest

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never copied upstream in proxy mode: recomputed by the HTTP client, or a credential the
# provider's auth headers replace.
_NOT_FORWARDED = frozenset({"host", "content-length", "expect", "authorization", "x-api-key"})
# What a reverse proxy says about the client and the network (X-Forwarded-* too, by prefix): never sent to a
# provider, on any route, even when the forward list names it (docs/observability.md, Client address).
FORWARDING = frozenset({"forwarded", "x-real-ip"})
_FORWARDING_PREFIX = "x-forwarded-"
_NEVER_PREFIXES = ("x-portkey-", _FORWARDING_PREFIX)


def is_forwarding(name: str) -> bool:
    """Tell whether a (lower-case) header name is one a reverse proxy adds about the client."""
    return name in FORWARDING or name.startswith(_FORWARDING_PREFIX)


def connection_tokens(items: list[tuple[str, str]]) -> set[str]:
    """Return the header names listed in Connection, which are hop-by-hop too."""
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def forward_list(header_value: str | None, config_list: Iterable[str] = ()) -> tuple[str, ...]:
    """Parse x-portkey-forward-headers (plus a config list) into lower-case names."""
    names = [n.strip().lower() for n in (header_value or "").split(",") if n.strip()]
    names += [n.strip().lower() for n in config_list if n.strip()]
    if "x-portkey-forward-headers" in names:
        raise BadRequest("x-portkey-forward-headers may not name itself")
    refused = next((name for name in names if is_forwarding(name)), None)
    if refused is not None:
        # Refused rather than dropped: the client asked for it by name and should learn it does not happen.
        raise BadRequest(f"x-portkey-forward-headers (or a config's forward_headers) may not name {refused}: "
                         "Forwarded, X-Forwarded-* and X-Real-IP never go to a provider")
    return tuple(dict.fromkeys(names))


def _checked(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise BadRequest(f"Header {name} contains a line break or NUL and cannot be forwarded")
    return value


def proxy_drop_set(ignore: Iterable[str]) -> frozenset[str]:
    """Return the header names a proxy call never forwards: built once, from the configured ignore list."""
    return HOP_BY_HOP | _NOT_FORWARDED | FORWARDING | {name.lower() for name in ignore}


def proxy_headers(client: Iterable[tuple[str, str]], drop: frozenset[str]) -> dict[str, str]:
    """Return the client headers a proxy call forwards upstream (`drop` from proxy_drop_set)."""
    items = list(client)
    tokens = connection_tokens(items)
    if tokens:
        drop = drop | tokens
    out: dict[str, str] = {}
    for name, value in items:
        lower = name.lower()
        if lower in drop or lower.startswith(_NEVER_PREFIXES):
            continue
        out[name] = _checked(name, value)
    return out


def forwarded_headers(client: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """Return the client headers named in the forward list (any route)."""
    out: dict[str, str] = {}
    for name in names:
        if name in HOP_BY_HOP or name in ("host", "content-length") or name.startswith("x-portkey-") \
                or is_forwarding(name):
            continue
        value = client.get(name)
        if value is not None:
            out[name] = _checked(name, value)
    return out


def response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the upstream response headers to relay, minus hop-by-hop ones."""
    items = list(upstream)
    tokens = connection_tokens(items)
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    return [(k, v) for k, v in items if k.lower() not in drop]
