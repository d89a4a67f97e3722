"""The checks that call out: `webhook` (a verdict from the client's service) and `jwt` (a token checked against a JWKS).

Both go through the context's GuardrailHTTP, which applies the custom-host policy and enforces the timeout as a
deadline for the whole call, the answer's body included: a host that trickles bytes cannot stretch it
(docs/security.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.algorithms import get_default_algorithms

from app.errors import GatewayError
from app.guardrails.context import CheckError, CheckInput, CheckOutcome, GuardrailHTTP
from app.guardrails.params import (
    CheckSpec,
    Param,
    count,
    duration,
    header_dict,
    header_map,
    http_url,
    parse_duration,
    text,
    webhook_timeout,
)
from app.guardrails.text import request_text, response_text

DEFAULT_WEBHOOK_TIMEOUT_MS = 3000
JWKS_TIMEOUT_S = 3.0
DEFAULT_CACHE_MAX_AGE_S = 86400
DEFAULT_CLOCK_TOLERANCE_S = 5
DEFAULT_MAX_TOKEN_AGE = "1d"
# An unknown kid may mean the issuer rotated keys; refetch, but not more often than this (else any
# client could make the gateway hammer the JWKS endpoint with made-up kids).
JWKS_REFRESH_MIN_S = 60.0
JWKS_CACHE_SIZE = 64
_EVENT_TYPES = {"before": "beforeRequestHook", "after": "afterRequestHook"}
# Asymmetric algorithms only, by key type: a JWKS is public, so an HMAC "key" from it would be no secret.
_ALGORITHMS_BY_KTY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512", "ES256K"),
    "OKP": ("EdDSA",),
}


def _http(inp: CheckInput) -> GuardrailHTTP:
    if inp.http is None:
        raise CheckError("no HTTP client")
    return inp.http


def _call_failed(what: str, err: Exception, timeout_ms: float) -> CheckError:
    """Return the short error for a failed call: a timeout, a refused host, or the kind of failure."""
    name = type(err).__name__
    if isinstance(err, TimeoutError) or "Timeout" in name:
        return CheckError(f"{what} timed out after {timeout_ms:g} ms")
    if isinstance(err, GatewayError):
        detail = f" ({err.errors[0]})" if err.errors and err.errors[0] not in err.message else ""
        return CheckError(f"{what} failed: {err.message}{detail}")
    return CheckError(f"{what} failed: {name}")


# --- webhook -----------------------------------------------------------------------------------

def webhook(inp: CheckInput, params: Mapping[str, Any]) -> CheckOutcome:
    """POST the hook context to `webhookURL`; its JSON `verdict` decides (it may also return transformedData)."""
    http, timeout_ms = _http(inp), params["timeout"]
    try:
        status, answer = http.post_json(params["webhookURL"], webhook_body(inp), header_dict(params["headers"]) or {},
                                        timeout_ms / 1000)
    except Exception as err:
        raise _call_failed("webhook", err, timeout_ms) from None
    if not 200 <= status < 300:
        raise CheckError(f"webhook answered HTTP {status}")
    if not isinstance(answer, Mapping) or not isinstance(answer.get("verdict"), bool):
        raise CheckError("webhook answer has no boolean verdict")
    verdict = answer["verdict"]
    data = {"explanation": "the webhook allowed it" if verdict else "the webhook refused it",
            "webhookUrl": _shown_url(params["webhookURL"]), "responseData": answer.get("data")}
    outcome = CheckOutcome(verdict, data)
    transformed = answer.get("transformedData")
    if isinstance(transformed, Mapping):
        side = transformed.get("request" if inp.event == "before" else "response")
        body = side.get("json") if isinstance(side, Mapping) else None
        if isinstance(body, Mapping):
            if inp.event == "before":
                outcome.request_json = body
            else:
                outcome.response_json = body
            data["transformed"] = True
    return outcome


def webhook_body(inp: CheckInput) -> dict[str, Any]:
    """Return what a webhook receives: the request, the answer, metadata, provider and event (no client headers)."""
    answer = inp.response_json if inp.event == "after" else None
    return {
        "request": {"json": inp.request_json, "text": request_text(inp.endpoint, inp.request_json) or ""},
        "response": {"json": answer, "text": response_text(inp.endpoint, answer) or ""},
        "metadata": dict(inp.metadata),
        "provider": inp.ctx.provider,
        "requestType": inp.endpoint,
        "eventType": _EVENT_TYPES.get(inp.event, inp.event),
    }


def _shown_url(url: str) -> str:
    """Return the URL without userinfo, query and fragment (they may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _webhook_timeout_s(params: Mapping[str, Any]) -> float:
    value = params.get("timeout")
    return (value if isinstance(value, int | float) and value > 0 else DEFAULT_WEBHOOK_TIMEOUT_MS) / 1000


# --- jwt ---------------------------------------------------------------------------------------

class JWKSCache:
    """JWKS documents by URI, each kept for the cacheMaxAge of the check that fetched it."""

    def __init__(self, size: int = JWKS_CACHE_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, float, Mapping[str, Any]]] = {}

    def get(self, uri: str, http: GuardrailHTTP, max_age: float, *, refresh: bool = False) -> Mapping[str, Any]:
        """Return the JWKS of `uri`, fetching it when absent, expired, or (rate-limited) when `refresh`."""
        now = clock()
        with self._lock:
            entry = self._entries.get(uri)
        if entry is not None:
            expires, fetched, jwks = entry
            stale = refresh and now - fetched >= JWKS_REFRESH_MIN_S
            if expires > now and not stale:
                return jwks
        jwks = fetch_jwks(uri, http)
        with self._lock:
            self._entries.pop(uri, None)
            if len(self._entries) >= self._size:
                del self._entries[next(iter(self._entries))]
            self._entries[uri] = (now + max_age, now, jwks)
        return jwks

    def clear(self) -> None:
        """Forget every JWKS."""
        with self._lock:
            self._entries.clear()


def clock() -> float:
    """Return the monotonic time the JWKS cache counts in (tests replace it)."""
    return time.monotonic()


JWKS = JWKSCache()


def fetch_jwks(uri: str, http: GuardrailHTTP) -> Mapping[str, Any]:
    """Fetch a JWKS document; raise CheckError when it cannot be had."""
    try:
        status, jwks = http.get_json(uri, JWKS_TIMEOUT_S)
    except Exception as err:
        raise _call_failed("JWKS fetch", err, JWKS_TIMEOUT_S * 1000) from None
    if not 200 <= status < 300:
        raise CheckError(f"JWKS fetch answered HTTP {status}")
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise CheckError("JWKS document has no keys")
    return jwks


def jwt_check(inp: CheckInput, params: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Verify the token in header `headerKey` against the JWKS at `jwksUri` (signature, exp/nbf, maxTokenAge)."""
    header_value = inp.header(params["headerKey"])
    if not header_value:
        return False, {"explanation": f"missing {params['headerKey']} header"}
    token = _strip_bearer(header_value)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return False, {"explanation": "the token is malformed"}
    kid = header.get("kid")
    if not isinstance(kid, str):
        return False, {"explanation": "the token names no key (kid)"}
    http, max_age = _http(inp), params["cacheMaxAge"]
    jwk = _find_key(JWKS.get(params["jwksUri"], http, max_age), kid)
    if jwk is None:
        jwk = _find_key(JWKS.get(params["jwksUri"], http, max_age, refresh=True), kid)
    if jwk is None:
        return False, {"explanation": "no key in the JWKS matches the token's kid", "kid": kid}
    return _verify(token, header, jwk, params)


def _strip_bearer(value: str) -> str:
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else value.strip()


def _find_key(jwks: Mapping[str, Any], kid: str) -> Mapping[str, Any] | None:
    return next((key for key in jwks["keys"] if isinstance(key, Mapping) and key.get("kid") == kid), None)


def _verify(token: str, header: Mapping[str, Any], jwk: Mapping[str, Any],
            params: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Check the token's signature, times and age with one JWKS key."""
    kid, alg = jwk.get("kid"), _algorithm(header, jwk)
    if alg is None:
        return False, {"explanation": f"the token's algorithm {header.get('alg')!r} does not fit the key", "kid": kid}
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWKError as err:
        raise CheckError(f"the JWKS key '{kid}' is unusable: {err}") from None
    leeway = params["clockTolerance"]
    try:
        claims = jwt.decode(token, key.key, algorithms=[alg], leeway=leeway, options={"verify_aud": False})
    except jwt.ExpiredSignatureError:
        return False, {"explanation": "the token has expired", "kid": kid}
    except jwt.ImmatureSignatureError:
        return False, {"explanation": "the token is not valid yet", "kid": kid}
    except jwt.InvalidTokenError as err:
        return False, {"explanation": f"the token is invalid: {err}", "kid": kid}
    too_old = _age_problem(claims, params["maxTokenAge"], leeway)
    if too_old:
        return False, {"explanation": too_old, "kid": kid}
    return True, {"explanation": "the token is valid", "kid": kid, "alg": alg}


def _algorithm(header: Mapping[str, Any], jwk: Mapping[str, Any]) -> str | None:
    """Return the algorithm to verify with: the key's own, else the token's when it suits the key type."""
    allowed = _ALGORITHMS_BY_KTY.get(str(jwk.get("kty")), ())
    wanted = jwk.get("alg") or header.get("alg")
    return wanted if wanted in allowed and wanted == header.get("alg") and wanted in _SUPPORTED else None


def _age_problem(claims: Mapping[str, Any], max_token_age: Any, leeway: float) -> str | None:
    """Return why the token is older than maxTokenAge, or None when it is young enough."""
    max_age = parse_duration(max_token_age)
    if max_age is None:
        return None
    issued = claims.get("iat")
    if not isinstance(issued, int | float) or isinstance(issued, bool):
        return "the token has no iat, which maxTokenAge needs"
    if time.time() - issued > max_age + leeway:
        return f"the token is older than maxTokenAge ({max_token_age})"
    return None


_SUPPORTED = frozenset(get_default_algorithms())

SPECS = (
    CheckSpec("webhook", webhook, {
        "webhookURL": Param(http_url, required=True),
        "headers": Param(header_map),
        "timeout": Param(webhook_timeout, default=DEFAULT_WEBHOOK_TIMEOUT_MS),
    }, invertible=False, io=True, timeout_s=_webhook_timeout_s),
    CheckSpec("jwt", jwt_check, {
        "jwksUri": Param(http_url, required=True),
        "headerKey": Param(text, required=True),
        "cacheMaxAge": Param(count, default=DEFAULT_CACHE_MAX_AGE_S),
        "clockTolerance": Param(count, default=DEFAULT_CLOCK_TOLERANCE_S),
        "maxTokenAge": Param(duration, default=DEFAULT_MAX_TOKEN_AGE),
    }, invertible=False, io=True, timeout_s=lambda params: JWKS_TIMEOUT_S * 2),
)
