"""Tests for the checks that call out: webhook and jwt, with a fake GuardrailHTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from app.errors import InvalidCustomHost, UpstreamTimeout
from app.guardrails import HookContext, run_hooks
from app.guardrails import remote as remote_module

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "hi there"}}]}
HOOK_URL = "https://hooks.example/guard?token=s3cret"
JWKS_URI = "https://idp.example/.well-known/jwks.json"


class FakeHTTP:
    """A GuardrailHTTP that records calls and answers from a script."""

    def __init__(self, post: Any = (200, {"verdict": True}), get: Any = None) -> None:
        self.post_answer, self.get_answer = post, get
        self.posts: list[dict[str, Any]] = []
        self.gets: list[str] = []

    def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                  timeout_s: float) -> tuple[int, Any]:
        self.posts.append({"url": url, "body": body, "headers": headers, "timeout_s": timeout_s})
        if isinstance(self.post_answer, Exception):
            raise self.post_answer
        return self.post_answer  # type: ignore[no-any-return]

    def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        self.gets.append(url)
        if isinstance(self.get_answer, Exception):
            raise self.get_answer
        return self.get_answer  # type: ignore[no-any-return]


def run_check(check: dict[str, Any], http: Any, *, event: str = "before", headers: dict[str, str] | None = None,
              metadata: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    hooks = [{"id": "h", "type": "guardrail", "checks": [check]}]
    ctx = HookContext(event, "chatComplete", REQUEST, ANSWER if event == "after" else None, metadata or {},
                      headers or {}, "openai", http)
    result = run_hooks(hooks, ctx)
    return result.results[0]["checks"][0], result


# --- webhook -------------------------------------------------------------------------------------

def webhook(**params: Any) -> dict[str, Any]:
    return {"id": "default.webhook", "parameters": {"webhookURL": HOOK_URL, **params}}


@pytest.mark.parametrize("verdict", [True, False])
def test_webhook_verdict_decides(verdict: bool) -> None:
    http = FakeHTTP(post=(200, {"verdict": verdict, "data": {"score": 0.3}}))
    entry, _ = run_check(webhook(), http)
    assert entry["verdict"] is verdict and "error" not in entry
    assert entry["data"]["responseData"] == {"score": 0.3}
    assert entry["data"]["webhookUrl"] == "https://hooks.example/guard"  # no query: it may hold a secret


def test_webhook_request() -> None:
    http = FakeHTTP()
    run_check(webhook(headers='{"x-api-key": "k"}', timeout=1500), http, event="after",
              headers={"authorization": "Bearer client-secret"}, metadata={"user": "u1"})
    call = http.posts[0]
    assert (call["url"], call["headers"], call["timeout_s"]) == (HOOK_URL, {"x-api-key": "k"}, 1.5)
    assert call["body"] == {
        "request": {"json": REQUEST, "text": "hello"}, "response": {"json": ANSWER, "text": "hi there"},
        "metadata": {"user": "u1"}, "provider": "openai", "requestType": "chatComplete",
        "eventType": "afterRequestHook"}
    run_check(webhook(), http)
    assert http.posts[1]["timeout_s"] == 3.0 and http.posts[1]["body"]["eventType"] == "beforeRequestHook"
    assert http.posts[1]["body"]["response"] == {"json": None, "text": ""}


@pytest.mark.parametrize(("answer", "error"), [
    ((500, {"verdict": True}), "webhook answered HTTP 500"),
    ((302, None), "webhook answered HTTP 302"),
    ((200, None), "webhook answer has no boolean verdict"),
    ((200, {"verdict": "yes"}), "webhook answer has no boolean verdict"),
    (TimeoutError("slow"), "webhook timed out after 3000 ms"),
    (UpstreamTimeout(3000), "webhook timed out after 3000 ms"),
    (InvalidCustomHost("custom host 'http://10.0.0.1' resolves to 10.0.0.1, a private address"),
     "webhook failed: Invalid custom host: custom host 'http://10.0.0.1' resolves to 10.0.0.1, a private address"),
    (ConnectionResetError("peer said secret things"), "webhook failed: ConnectionResetError"),
])
def test_webhook_failures_are_errored_checks(answer: Any, error: str) -> None:
    entry, result = run_check(webhook(), FakeHTTP(post=answer))
    assert (entry["verdict"], entry["error"], result.verdict) == (False, error, False)


def test_webhook_without_http_client() -> None:
    entry, _ = run_check(webhook(), None)
    assert entry["error"] == "no HTTP client"


def test_webhook_transformed_data() -> None:
    new_request = {**REQUEST, "messages": [{"role": "user", "content": "rewritten"}]}
    http = FakeHTTP(post=(200, {"verdict": True, "transformedData": {"request": {"json": new_request}}}))
    _, result = run_check(webhook(), http)
    assert result.request_json == new_request
    _, result = run_check(webhook(), http, event="after")
    assert result.response_json is None  # a request change is ignored after the request


# --- jwt -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Two RSA keys: the issuer's (in the JWKS) and an impostor's."""
    return {"issuer": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "impostor": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
def jwks(keys: dict[str, Any]) -> dict[str, Any]:
    public = RSAAlgorithm.to_jwk(keys["issuer"].public_key(), as_dict=True)
    return {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}


@pytest.fixture(autouse=True)
def fresh_jwks_cache() -> Iterator[None]:
    remote_module.JWKS.clear()
    yield
    remote_module.JWKS.clear()


def token(key: Any, *, kid: str = "k1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "user-1", "iat": now, "exp": now + 600, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def jwt_check(**params: Any) -> dict[str, Any]:
    return {"id": "default.jwt", "parameters": {"jwksUri": JWKS_URI, "headerKey": "Authorization", **params}}


def check_token(value: str | None, jwks: Any, **params: Any) -> tuple[dict[str, Any], FakeHTTP]:
    http = FakeHTTP(get=(200, jwks))
    headers = {"authorization": value} if value is not None else {}
    entry, _ = run_check(jwt_check(**params), http, headers=headers)
    return entry, http


def test_jwt_valid(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    entry, http = check_token("Bearer " + token(keys["issuer"]), jwks)
    assert entry["verdict"] is True and "error" not in entry, entry
    assert entry["data"] == {"explanation": "the token is valid", "kid": "k1", "alg": "RS256"}
    assert http.gets == [JWKS_URI]
    entry, _ = check_token(token(keys["issuer"]), jwks)  # a bare token works too
    assert entry["verdict"] is True


@pytest.mark.parametrize(("make", "params", "explanation"), [
    (lambda k: token(k["issuer"], exp=int(time.time()) - 60), {}, "the token has expired"),
    (lambda k: token(k["issuer"], nbf=int(time.time()) + 600), {}, "the token is not valid yet"),
    (lambda k: token(k["impostor"]), {}, "the token is invalid: Signature verification failed"),
    (lambda k: token(k["impostor"], kid="k9"), {}, "no key in the JWKS matches the token's kid"),
    (lambda k: token(k["issuer"], iat=int(time.time()) - 7200), {"maxTokenAge": "1h"},
     "the token is older than maxTokenAge (1h)"),
    (lambda k: token(k["issuer"], iat=None), {}, "the token has no iat, which maxTokenAge needs"),
    (lambda k: token(b"a-shared-secret-that-is-long-enough!", alg="HS256"), {},
     "the token's algorithm 'HS256' does not fit the key"),
    (lambda k: "not.a.token", {}, "the token is malformed"),
])
def test_jwt_refused(keys: dict[str, Any], jwks: dict[str, Any], make: Any, params: dict[str, Any],
                     explanation: str) -> None:
    entry, _ = check_token("Bearer " + make(keys), jwks, **params)
    assert entry["verdict"] is False and "error" not in entry
    assert entry["data"]["explanation"] == explanation


def test_jwt_missing_header(jwks: dict[str, Any]) -> None:
    entry, http = check_token(None, jwks)
    assert entry["verdict"] is False and entry["data"]["explanation"] == "missing Authorization header"
    assert http.gets == []


def test_jwt_header_key_and_tolerances(keys: dict[str, Any], jwks: dict[str, Any]) -> None:
    http = FakeHTTP(get=(200, jwks))
    entry, _ = run_check(jwt_check(headerKey="X-User-Token"), http,
                         headers={"x-user-token": token(keys["issuer"])})
    assert entry["verdict"] is True
    entry, _ = run_check(jwt_check(), http, headers={"Authorization": "bearer " + token(keys["issuer"])})
    assert entry["verdict"] is True
    late = token(keys["issuer"], exp=int(time.time()) - 3)
    assert check_token(late, jwks, clockTolerance=30)[0]["verdict"] is True
    assert check_token(late, jwks, clockTolerance=0)[0]["verdict"] is False
    old = token(keys["issuer"], iat=int(time.time()) - 7200)
    assert check_token(old, jwks, maxTokenAge="3h")[0]["verdict"] is True
    assert check_token(old, jwks, maxTokenAge=3600)[0]["verdict"] is False


def test_jwks_is_cached(keys: dict[str, Any], jwks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    http = FakeHTTP(get=(200, jwks))
    now = [1000.0]
    monkeypatch.setattr(remote_module, "clock", lambda: now[0])
    for _ in range(3):
        entry, _ = run_check(jwt_check(cacheMaxAge=60), http, headers={"authorization": token(keys["issuer"])})
        assert entry["verdict"] is True
    assert http.gets == [JWKS_URI]
    now[0] += 61
    run_check(jwt_check(cacheMaxAge=60), http, headers={"authorization": token(keys["issuer"])})
    assert http.gets == [JWKS_URI] * 2


def test_unknown_kid_refetches_at_most_once_a_minute(keys: dict[str, Any], jwks: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    http = FakeHTTP(get=(200, jwks))
    now = [1000.0]
    monkeypatch.setattr(remote_module, "clock", lambda: now[0])
    stranger = token(keys["issuer"], kid="rotated")
    for _ in range(3):
        entry, _ = run_check(jwt_check(), http, headers={"authorization": stranger})
        assert entry["verdict"] is False
    assert http.gets == [JWKS_URI]
    now[0] += 61
    run_check(jwt_check(), http, headers={"authorization": stranger})
    assert http.gets == [JWKS_URI] * 2


@pytest.mark.parametrize(("answer", "error"), [
    ((500, None), "JWKS fetch answered HTTP 500"),
    ((200, {"nope": []}), "JWKS document has no keys"),
    (TimeoutError(), "JWKS fetch timed out after 3000 ms"),
])
def test_jwks_fetch_failures_are_errors(keys: dict[str, Any], answer: Any, error: str) -> None:
    entry, _ = run_check(
        jwt_check(), FakeHTTP(get=answer), headers={"authorization": token(keys["issuer"])})
    assert (entry["verdict"], entry["error"]) == (False, error)


def test_jwt_without_http_client(keys: dict[str, Any]) -> None:
    entry, _ = run_check(jwt_check(), None, headers={"authorization": token(keys["issuer"])})
    assert entry["error"] == "no HTTP client"


def test_jwks_cache_is_bounded() -> None:
    cache = remote_module.JWKSCache(size=2)
    http = FakeHTTP(get=(200, {"keys": []}))
    for uri in ("https://a/", "https://b/", "https://c/", "https://a/"):
        cache.get(uri, http, 600)
    assert http.gets == ["https://a/", "https://b/", "https://c/", "https://a/"]
