"""Webhook and jwt checks reach their hosts through the gateway's HookHTTP and its real custom-host policy.

A real HTTP server on 127.0.0.1 stands in for the webhook and the identity provider (docs/security.md:
a guardrail's outbound call obeys `custom_hosts.allow` like a custom host does).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm

from app.guardrails import HookContext, remote, run_hooks
from app.http.hosts import HostPolicy
from app.http.sessions import new_session
from app.pipeline.upstream import HookHTTP
from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [{**json.loads(RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "alg": "RS256"}]}
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]}


class HookServer:
    """A loopback HTTP server answering POST /hook with a verdict and GET /jwks with a key set; it keeps what it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.answer({"verdict": True, "data": {"seen": True}}, json.loads(body))

            def do_GET(self) -> None:  # noqa: N802
                self.answer(JWKS, None)

            def answer(self, payload: Any, received: Any) -> None:
                owner.requests.append({"method": self.command, "path": self.path, "body": received,
                                       "host": self.headers.get("Host")})
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks_host() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fresh_jwks_cache() -> Iterator[None]:
    remote.JWKS.clear()
    yield
    remote.JWKS.clear()


def hook_http(allow: tuple[str, ...], resolver: Callable[..., list] | None = None) -> HookHTTP:
    session = new_session()
    return HookHTTP(lambda: session, HostPolicy(allow, resolver=resolver))


def only_check(check: dict[str, Any], http: HookHTTP, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one before-request check with the given client; return its hook_results entry."""
    ctx = HookContext("before", "chatComplete", CHAT, None, {"team": "a"}, headers or {}, "openai", http)
    result = run_hooks([{"id": "h", "type": "guardrail", "checks": [check]}], ctx)
    entry: dict[str, Any] = result.results[0]["checks"][0]
    return entry


def webhook(url: str) -> dict[str, Any]:
    return {"id": "default.webhook", "parameters": {"webhookURL": url, "headers": {"x-hook-secret": "h"}}}


def jwt_check(uri: str) -> dict[str, Any]:
    return {"id": "default.jwt", "parameters": {"jwksUri": uri, "headerKey": "Authorization"}}


def token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "u", "iat": now, "exp": now + 600}, KEY, algorithm="RS256", headers={"kid": "k1"})


def resolving_to(address: str) -> Callable[..., list]:
    return lambda host, port, *_: [(2, 1, 6, "", (address, port))]


# --- webhook ----------------------------------------------------------------------------------------

def test_webhook_on_an_allowed_loopback_host_is_called(hooks_host: HookServer) -> None:
    entry = only_check(webhook(f"{hooks_host.url}/hook?v=1"), hook_http(("127.0.0.1",)))
    assert entry["verdict"] is True and "error" not in entry, entry
    assert entry["data"]["responseData"] == {"seen": True}
    [call] = hooks_host.requests
    assert (call["method"], call["path"]) == ("POST", "/hook?v=1")
    assert call["body"]["request"]["json"] == CHAT and call["body"]["metadata"] == {"team": "a"}


@pytest.mark.parametrize(("allow", "resolver", "refusal"), [
    ((), None, "a loopback address"),  # loopback is refused unless allowed
    (("10.0.0.0/8",), None, "a loopback address"),  # another range allowed, not this one
    ((), resolving_to("127.0.0.1"), "a loopback address"),  # a name that resolves to loopback
])
def test_webhook_to_a_host_the_policy_refuses_is_never_called(hooks_host: HookServer, allow: tuple[str, ...],
                                                              resolver: Callable[..., list] | None,
                                                              refusal: str) -> None:
    host = f"hooks.internal.test:{hooks_host.port}" if resolver else f"127.0.0.1:{hooks_host.port}"
    entry = only_check(webhook(f"http://{host}/hook"), hook_http(allow, resolver))
    assert entry["verdict"] is False
    assert entry["error"].startswith("webhook failed: Invalid custom host"), entry
    assert refusal in entry["error"]
    assert hooks_host.requests == []


def test_webhook_by_name_goes_to_the_address_the_policy_checked(hooks_host: HookServer) -> None:
    lookups: list[str] = []

    def resolver(host: str, port: int, *_: Any) -> list:
        lookups.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]
    http = hook_http(("127.0.0.0/8",), resolver)
    for _ in range(2):
        entry = only_check(webhook(f"http://hooks.internal.test:{hooks_host.port}/hook"), http)
        assert entry["verdict"] is True, entry
    # The name does not exist: only the policy's lookup saw it (memoised), and the socket went to its answer.
    assert lookups == ["hooks.internal.test"]
    assert [call["host"] for call in hooks_host.requests] == [f"hooks.internal.test:{hooks_host.port}"] * 2


# --- jwt --------------------------------------------------------------------------------------------

def test_jwt_check_fetches_its_keys_from_an_allowed_loopback_host(hooks_host: HookServer) -> None:
    entry = only_check(jwt_check(f"{hooks_host.url}/jwks"), hook_http(("127.0.0.1",)),
                       {"authorization": f"Bearer {token()}"})
    assert entry["verdict"] is True and entry["data"]["explanation"] == "the token is valid", entry
    assert [(call["method"], call["path"]) for call in hooks_host.requests] == [("GET", "/jwks")]


def test_jwt_check_with_a_refused_jwks_host_fetches_nothing(hooks_host: HookServer) -> None:
    entry = only_check(jwt_check(f"{hooks_host.url}/jwks"), hook_http(()), {"authorization": f"Bearer {token()}"})
    assert entry["verdict"] is False
    assert entry["error"].startswith("JWKS fetch failed: Invalid custom host"), entry
    assert hooks_host.requests == []


# --- through the gateway: the app's own HookHTTP uses the gateway file's custom_hosts.allow -----------

def chat_with_webhook(app: Flask, hook_url: str, upstream: str) -> Any:
    config = {"provider": "openai", "custom_host": upstream, "before_request_hooks": [
        {"id": "guard", "type": "guardrail", "deny": True, "checks": [webhook(hook_url)]}]}
    return app.test_client().post("/v1/chat/completions", json=CHAT, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-config": json.dumps(config), "Authorization": "Bearer sk-x"})


def test_the_gateway_calls_an_allowed_webhook_and_refuses_another(app_factory: Callable[..., Flask],
                                                                  hooks_host: HookServer) -> None:
    with FakeProvider() as fake:
        allowed = chat_with_webhook(app_factory(custom_hosts_allow=("127.0.0.1",)), f"{hooks_host.url}/hook",
                                    f"{fake.url}/v1")
        assert allowed.status_code == 200, allowed.get_data(as_text=True)
        assert len(hooks_host.requests) == 1 and len(fake.requests) == 1
        # Only the provider's host is allowed here: the webhook on loopback is refused, so the call is denied.
        refused = chat_with_webhook(app_factory(custom_hosts_allow=("localhost",)), f"{hooks_host.url}/hook",
                                    f"http://localhost:{fake.url.rsplit(':', 1)[1]}/v1")
    assert refused.status_code == 446, refused.get_data(as_text=True)
    [check] = refused.get_json()["hook_results"]["before_request_hooks"][0]["checks"]
    assert check["error"].startswith("webhook failed: Invalid custom host"), check
    assert len(hooks_host.requests) == 1 and len(fake.requests) == 1
