"""DNS pinning and session hygiene: the socket goes to the checked address, never re-resolved."""

from __future__ import annotations

from requests.adapters import HTTPAdapter

from app.http.sessions import new_session
from tests.conftest import GATEWAY_KEY
from tests.fakes.provider import FakeProvider


def test_custom_host_name_is_connected_to_the_checked_address(app_factory) -> None:
    lookups: list[str] = []

    def resolver(host, port, *_):
        lookups.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]
    with FakeProvider() as fake:
        app = app_factory(custom_hosts_allow=("127.0.0.0/8",))
        app.extensions["portico"].policy._resolver = resolver
        client = app.test_client()
        host = f"http://api.pinned.test:{fake.url.rsplit(':', 1)[1]}/v1"
        for _ in range(3):
            res = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={
                "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere", "x-portkey-custom-host": host,
                "Authorization": "Bearer x"})
            assert res.status_code == 200, res.get_data(as_text=True)
        # The name never reached the system resolver (it does not exist); the Host header still names it.
        assert lookups == ["api.pinned.test"]
        assert fake.requests[0].headers["host"] == f"api.pinned.test:{fake.url.rsplit(':', 1)[1]}"


def test_name_resolving_to_a_private_address_is_refused(app_factory) -> None:
    app = app_factory(custom_hosts_allow=())
    app.extensions["portico"].policy._resolver = lambda *a: [(2, 1, 6, "", ("10.1.2.3", 80))]
    res = app.test_client().post("/v1/rerank", json={}, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
        "x-portkey-custom-host": "http://innocent.example.com"})
    assert res.status_code == 400
    assert res.get_json()["message"].startswith("Invalid custom host: ")
    assert "10.1.2.3" in res.get_json()["errors"][0] and "10.1.2.3" in res.get_json()["message"]


def test_sessions_do_not_retry_trust_env_or_keep_cookies() -> None:
    session = new_session()
    adapter = session.get_adapter("https://api.openai.com")
    assert isinstance(adapter, HTTPAdapter)
    assert adapter.max_retries.total == 0
    assert session.trust_env is False
    assert dict(session.headers) == {}
    with FakeProvider() as fake:
        session.get(f"{fake.url}/v1/x", headers={"x-fake-set-cookie": "session=abc"})
        assert len(session.cookies) == 0
