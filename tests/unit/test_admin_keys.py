"""The admin API for managed keys (docs/governance.md, Admin API), through the Flask test client.

Each app gets a throwaway state file of its own (Settings.state_path None), so tests never share keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.governance.keys import hash_secret
from app.governance.store import StateUnavailable
from app.routes import keys as keys_routes
from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET, make_settings
from tests.fakes.provider import FakeProvider

ADMIN = "admin-key-for-tests-0001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def build(**changes: Any) -> Flask:
    """Return an app from test settings with the keys blueprint (create_app registers it; older trees did not)."""
    built = create_app(make_settings(**changes))
    if "keys" not in built.blueprints:
        built.register_blueprint(keys_routes.bp)
    built.testing = True
    return built


@pytest.fixture
def app() -> Flask:
    """Return an app with the admin API on, one static key (team-a) and its own state file."""
    return build(admin_key_sha256=hash_secret(ADMIN))


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    """Return a test client of the app."""
    return app.test_client()


def created(admin: FlaskClient, **fields: Any) -> dict[str, Any]:
    """Create a managed key (name `bot` unless given) and return the answer's JSON."""
    res = admin.post("/admin/keys", json={"name": "bot", **fields}, headers=AUTH)
    assert res.status_code == 201, res.get_data(as_text=True)
    return res.get_json()  # type: ignore[no-any-return]


def call(app: Flask, fake: FakeProvider, secret: str) -> Any:
    """Make a chat call with a gateway key to the fake provider; the answer is read and closed (recorded)."""
    headers = {"x-portkey-api-key": secret, "x-portkey-provider": "openai",
               "x-portkey-custom-host": f"{fake.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}"}
    res = app.test_client().post("/v1/chat/completions", json=CHAT, headers=headers)
    res.get_data()
    res.close()
    return res


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until check() holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_create_shows_the_secret_once_and_never_again(admin: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = created(admin, models=["openai/*"], limits={"rpm": 10}, budget={"usd": 5, "period": "day"},
                   metadata={"team": "x"}, expires_at="2099-01-01T00:00:00Z")
    secret = body["key"]
    assert secret.startswith("pk-") and body["id"].startswith("key_")
    assert body["name"] == "bot" and body["static"] is False and body["revoked"] is False
    assert body["models"] == ["openai/*"] and body["limits"] == {"rpm": 10}
    assert body["budget"] == {"usd": 5.0, "period": "day"} and body["metadata"] == {"team": "x"}
    assert body["expires_at"] == "2099-01-01T00:00:00Z"
    for path in ("/admin/keys", f"/admin/keys/{body['id']}"):
        text = admin.get(path, headers=AUTH).get_data(as_text=True)
        assert body["id"] in text
        assert secret not in text and hash_secret(secret) not in text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert body["id"] in logged  # the change is logged, without its secret
    assert secret not in logged and hash_secret(secret) not in logged


def test_list_holds_static_and_managed_keys_with_usage(admin: FlaskClient) -> None:
    key_id = created(admin, budget={"usd": 1, "period": "month"})["id"]
    res = admin.get("/admin/keys", headers=AUTH)
    assert res.status_code == 200
    listed = res.get_json()
    assert listed["object"] == "list"
    assert [(k["id"], k["static"]) for k in listed["data"]] == [("static:team-a", True), (key_id, False)]
    usage = listed["data"][1]["usage"]
    assert usage == {"spent_usd": 0.0, "reserved_usd": 0.0, "period": time.strftime("%Y-%m", time.gmtime()),
                     "requests_last_60s": 0, "tokens_last_60s": 0, "in_flight": 0}
    assert listed["data"][0]["usage"]["period"] is None  # no budget, no period
    one = admin.get("/admin/keys/static:team-a", headers=AUTH)
    assert one.status_code == 200 and one.get_json()["name"] == "team-a"
    assert GATEWAY_KEY not in one.get_data(as_text=True) and hash_secret(GATEWAY_KEY) not in one.get_data(as_text=True)


def test_a_created_key_works_at_once_and_usage_counts_its_calls(app: Flask, admin: FlaskClient,
                                                                  fake_provider: FakeProvider) -> None:
    body = created(admin, limits={"rpm": 100})
    assert call(app, fake_provider, body["key"]).status_code == 200
    assert len(fake_provider.requests) == 1

    def counted() -> bool:
        usage = admin.get(f"/admin/keys/{body['id']}", headers=AUTH).get_json()["usage"]
        return usage["requests_last_60s"] == 1 and usage["in_flight"] == 0
    wait_for(counted)


def test_revoke_refuses_the_key_at_once_and_keeps_it(app: Flask, admin: FlaskClient,
                                                     fake_provider: FakeProvider) -> None:
    body = created(admin)
    assert call(app, fake_provider, body["key"]).status_code == 200
    res = admin.delete(f"/admin/keys/{body['id']}", headers=AUTH)
    assert res.status_code == 200 and res.get_json()["revoked"] is True
    refused = call(app, fake_provider, body["key"])
    assert refused.status_code == 401 and "revoked" in refused.get_json()["message"]
    assert admin.get(f"/admin/keys/{body['id']}", headers=AUTH).get_json()["revoked"] is True
    # A PATCH can take the revocation back.
    assert admin.patch(f"/admin/keys/{body['id']}", json={"revoked": False}, headers=AUTH).status_code == 200
    assert call(app, fake_provider, body["key"]).status_code == 200


def test_rotate_with_grace_keeps_the_old_secret_working_until_the_grace_ends(app: Flask, admin: FlaskClient,
                                                                             fake_provider: FakeProvider) -> None:
    body = created(admin)
    old = body["key"]
    res = admin.post(f"/admin/keys/{body['id']}/rotate", json={"grace_s": 0.4}, headers=AUTH)
    assert res.status_code == 200
    assert res.headers["Cache-Control"] == "no-store"
    rotated = res.get_json()
    new = rotated["key"]
    assert rotated["id"] == body["id"] and new != old and rotated["old_key_valid_until"].endswith("Z")
    started = time.monotonic()
    assert call(app, fake_provider, old).status_code == 200
    assert call(app, fake_provider, new).status_code == 200
    time.sleep(max(0.0, 0.45 - (time.monotonic() - started)))
    assert call(app, fake_provider, old).status_code == 401
    assert call(app, fake_provider, new).status_code == 200
    text = admin.get(f"/admin/keys/{body['id']}", headers=AUTH).get_data(as_text=True)
    assert new not in text and hash_secret(new) not in text


def test_rotate_without_grace_ends_the_old_secret_at_once(app: Flask, admin: FlaskClient,
                                                          fake_provider: FakeProvider) -> None:
    body = created(admin)
    res = admin.post(f"/admin/keys/{body['id']}/rotate", headers=AUTH)  # no body: grace 0
    assert res.status_code == 200 and res.get_json()["old_key_valid_until"] is None
    assert call(app, fake_provider, body["key"]).status_code == 401
    assert call(app, fake_provider, res.get_json()["key"]).status_code == 200


def test_patch_changes_fields_and_a_new_rpm_applies_at_once(app: Flask, admin: FlaskClient,
                                                            fake_provider: FakeProvider) -> None:
    body = created(admin, metadata={"a": 1})
    res = admin.patch(f"/admin/keys/{body['id']}", json={"limits": {"rpm": 1}, "name": "bot-2"}, headers=AUTH)
    assert res.status_code == 200
    changed = res.get_json()
    assert changed["limits"] == {"rpm": 1} and changed["name"] == "bot-2" and changed["metadata"] == {"a": 1}
    assert "usage" in changed and "key" not in changed
    assert call(app, fake_provider, body["key"]).status_code == 200
    refused = call(app, fake_provider, body["key"])
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(fake_provider.requests) == 1


def test_a_change_reaches_another_gateway_on_the_same_store_within_a_second(tmp_path, fake_provider) -> None:
    path = str(tmp_path / "state.sqlite")
    one = build(admin_key_sha256=hash_secret(ADMIN), state_path=path)
    two = build(state_path=path)
    assert call(two, fake_provider, "pk-not-yet").status_code == 401
    secret = created(one.test_client())["key"]
    started = time.monotonic()
    wait_for(lambda: call(two, fake_provider, secret).status_code == 200, timeout=1.5)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/admin/keys", {}, "name"),
    ("POST", "/admin/keys", {"name": "x", "limits": {"rpm": 0}}, "limits.rpm"),
    ("POST", "/admin/keys", {"name": "x", "colour": "red"}, "colour"),
    ("POST", "/admin/keys", {"name": "x", "budget": {"usd": -1}}, "budget.usd"),
    ("POST", "/admin/keys", {"name": "x", "models": ["ok/*", ""]}, "models[1]"),
    ("POST", "/admin/keys", {"name": "x", "expires_at": "soon"}, "expires_at"),
    ("POST", "/admin/keys", ["name"], "body"),
    ("PATCH", "/admin/keys/{id}", {"budget": {"usd": 1, "period": "week"}}, "budget.period"),
    ("PATCH", "/admin/keys/{id}", {"revoked": "yes"}, "revoked"),
    ("POST", "/admin/keys/{id}/rotate", {"grace_s": -1}, "grace_s"),
    ("POST", "/admin/keys/{id}/rotate", {"grace_s": True}, "grace_s"),
    ("POST", "/admin/keys/{id}/rotate", {"grace": 5}, "grace"),
])
def test_wrong_fields_are_400_naming_the_field(admin: FlaskClient, method: str, path: str, body: Any,
                                               field: str) -> None:
    key_id = created(admin)["id"]
    res = admin.open(path.format(id=key_id), method=method, json=body, headers=AUTH)
    assert res.status_code == 400, res.get_data(as_text=True)
    answer = res.get_json()
    assert answer["status"] == "failure"
    assert field in answer["message"]
    assert answer["errors"][0].startswith(f"{field}: ")


def test_a_body_that_is_not_json_is_400(admin: FlaskClient) -> None:
    for body in (b"{not json", b'{"name": NaN}'):
        res = admin.post("/admin/keys", data=body, headers={**AUTH, "Content-Type": "application/json"})
        assert res.status_code == 400
        assert res.get_json()["errors"] == ["body: must be JSON"]


def test_unknown_ids_are_404(admin: FlaskClient) -> None:
    for method, path in (("GET", "/admin/keys/key_nope"), ("PATCH", "/admin/keys/key_nope"),
                         ("DELETE", "/admin/keys/key_nope"), ("POST", "/admin/keys/key_nope/rotate"),
                         ("GET", "/admin/keys/static:nobody"), ("GET", "/admin/keys/whatever")):
        res = admin.open(path, method=method, json={}, headers=AUTH)
        assert res.status_code == 404, (method, path)
        assert res.get_json()["status"] == "failure" and "No gateway key" in res.get_json()["message"]


def test_static_keys_cannot_be_changed_through_the_api(admin: FlaskClient) -> None:
    for method, path in (("PATCH", "/admin/keys/static:team-a"), ("DELETE", "/admin/keys/static:team-a"),
                         ("POST", "/admin/keys/static:team-a/rotate")):
        res = admin.open(path, method=method, json={}, headers=AUTH)
        assert res.status_code == 409, (method, path)
        assert "gateway file" in res.get_json()["message"]


def test_every_route_needs_the_admin_key(admin: FlaskClient) -> None:
    routes = (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/static:team-a"),
              ("PATCH", "/admin/keys/static:team-a"), ("POST", "/admin/keys/static:team-a/rotate"),
              ("DELETE", "/admin/keys/static:team-a"))
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-portkey-api-key": GATEWAY_KEY}):
            res = admin.open(path, method=method, json={"name": "x"}, headers=headers)
            assert res.status_code == 401, (method, path, headers)
            assert res.get_json()["status"] == "failure"
    assert admin.get("/admin/keys").status_code == 401
    assert admin.get("/admin/keys", headers=AUTH).get_json()["data"][0]["id"] == "static:team-a"  # nothing created


def test_the_api_is_off_without_an_admin_key() -> None:
    client = build().test_client()
    res = client.get("/admin/keys", headers=AUTH)
    assert res.status_code == 403 and "admin" in res.get_json()["message"]


def test_an_unavailable_state_store_is_503_naming_the_problem(app: Flask, admin: FlaskClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    key_id = created(admin)["id"]
    store = app.extensions["portico"].governance.store

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise StateUnavailable("state store /x/state.sqlite: disk I/O error")
    for name in ("list_keys", "get_key", "put_key", "usage"):
        monkeypatch.setattr(store, name, down)
    for method, path in (("GET", "/admin/keys"), ("GET", f"/admin/keys/{key_id}"), ("POST", "/admin/keys"),
                         ("PATCH", f"/admin/keys/{key_id}"), ("DELETE", f"/admin/keys/{key_id}"),
                         ("POST", f"/admin/keys/{key_id}/rotate")):
        res = admin.open(path, method=method, json={"name": "x"} if path == "/admin/keys" else {}, headers=AUTH)
        assert res.status_code == 503, (method, path)
        assert "disk I/O error" in res.get_json()["message"]
