"""No response of the gateway carries a Location built from the client's Host header (docs/security.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import responses
from flask import Flask
from werkzeug.test import Client

from app.settings import hash_key
from tests.conftest import PROVIDER_SECRET, gw_headers

EVIL = "evil.example.com"
ADMIN_KEY = "admin-key-for-redirect-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OPENAI = "https://api.openai.com/v1"

# Doubled slashes (werkzeug merged them and answered 308 to the merged path on the Host header's host),
# trailing slashes, and both, on every family of routes: gateway, legacy proxy, admin, dashboard, health.
PATHS = [
    ("GET", "/v1//ok"), ("POST", "/v1//chat/completions"), ("GET", "/v1//models/"), ("GET", "//v1//ok"),
    ("GET", "/admin//logs"), ("GET", "/admin//dashboard"), ("GET", "/admin/static//uPlot.min.js"),
    ("GET", "/admin/logs/"), ("GET", "/admin/analytics/"), ("GET", "/admin/dashboard/"), ("GET", "/dashboard"),
    ("GET", "/dashboard/"), ("GET", "/healthz/"), ("GET", "//healthz//"), ("GET", "/metrics/"),
    ("POST", "/v1/chat/completions/"), ("GET", "/v1/proxy/"), ("GET", "/v1/proxy"), ("GET", "/v1/"),
]


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(admin_key_sha256=hash_key(ADMIN_KEY))


def call(app: Flask, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Send a request with a hostile Host header; the path goes into PATH_INFO as written (even `//x`)."""
    client = Client(app)
    return client.open(path="/", method=method, headers={"Host": EVIL, **(headers or {})},
                       environ_overrides={"PATH_INFO": path, "RAW_URI": path}, **kwargs)


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_no_path_is_answered_with_a_redirect(app: Flask, method: str, path: str) -> None:
    for headers in ({}, ADMIN, gw_headers()):
        res = call(app, method, path, headers)
        assert not 300 <= res.status_code < 400, (path, res.status_code)
        assert "Location" not in res.headers
        assert EVIL not in res.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/v1//ok", "/v1//chat/completions", "/admin//logs", "/admin/static//uPlot.min.js"])
def test_a_doubled_slash_is_a_404_in_the_gateway_shape_naming_the_problem(app: Flask, path: str) -> None:
    res = call(app, "POST" if "chat" in path else "GET", path, {**ADMIN, **gw_headers()})
    assert res.status_code == 404
    assert res.get_json()["status"] == "failure"
    assert "'//'" in res.get_json()["message"]


def test_a_doubled_slash_is_never_rewritten_only_routed_or_forwarded_as_written(app: Flask) -> None:
    headers = gw_headers(x_portkey_provider="openai", Authorization=f"Bearer {PROVIDER_SECRET}")
    with responses.RequestsMock() as upstream:
        upstream.post(f"{OPENAI}//chat/completions", json={"id": "x"})
        # No route for /v1//chat/completions: not merged into the unified route, not redirected there.
        assert call(app, "POST", "/v1//chat/completions", headers, json={"model": "m"}).status_code == 404
        # The proxy forwards the rest of the path verbatim, as it does any other byte of it.
        res = call(app, "POST", "/v1/proxy//chat/completions", headers, json={"model": "m"})
        assert res.status_code == 200
        assert [c.request.url for c in upstream.calls] == [f"{OPENAI}//chat/completions"]


def test_a_rule_that_wants_a_trailing_slash_answers_404_not_a_redirect(app: Flask) -> None:
    # werkzeug redirects /later to /later/ for such a rule; the gateway has none today, this keeps it safe.
    app.add_url_rule("/later/", "later", lambda: "here")
    assert call(app, "GET", "/later/").status_code == 200
    res = call(app, "GET", "/later")
    assert res.status_code == 404 and "Location" not in res.headers
    assert res.get_json()["status"] == "failure"
