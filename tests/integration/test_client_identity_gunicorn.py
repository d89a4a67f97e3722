"""Client identity through gunicorn: client_ip in the access line, /admin/logs and the dashboard; streams unbuffered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import ADMIN_KEY, Gateway, gateway_toml

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# As nginx sends them: the client's own (spoofed) claim, then the address nginx saw appended.
BEHIND_NGINX = {"X-Forwarded-For": "1.1.1.1, 203.0.113.7", "X-Real-IP": "203.0.113.7",
                "X-Forwarded-Proto": "https", "Forwarded": "for=1.1.1.1"}


@pytest.fixture(scope="module")
def trusting(fake: FakeProvider) -> Iterator[Gateway]:
    """Run a gateway that trusts loopback as its reverse proxy."""
    gw = Gateway(gateway_toml(fake.url, '\n[proxy]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n')).start()
    yield gw
    gw.stop()


def call(gateway: Gateway, fake: FakeProvider, trace: str, body: dict[str, Any] = CHAT) -> requests.Response:
    return requests.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10, headers={
        "x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "openai", "x-portkey-custom-host": f"{fake.url}/v1",
        "Authorization": f"Bearer {PROVIDER_SECRET}", "x-portkey-trace-id": trace, **BEHIND_NGINX})


def access_line(gateway: Gateway, trace: str, timeout: float = 5.0) -> dict[str, Any]:
    """Return the JSON access line of a trace id, waiting for the buffered writer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gateway.stdout.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{trace}"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {trace}")


def logged(gateway: Gateway, timeout: float = 5.0, **params: str) -> list[dict[str, Any]]:
    """Return the /admin/logs rows matching params once there are some, waiting for the background writer."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = requests.get(f"{gateway.url}/admin/logs", params=params, headers=ADMIN,
                                                  timeout=5).json()["logs"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_behind_a_trusted_proxy_the_client_is_the_address_it_saw(trusting: Gateway,
                                                                  fake_provider: FakeProvider) -> None:
    assert call(trusting, fake_provider, "cid-trusted").status_code == 200
    assert access_line(trusting, "cid-trusted")["client_ip"] == "203.0.113.7"
    rows = logged(trusting, client_ip="203.0.113.7")
    assert [row["trace_id"] for row in rows] == ["cid-trusted"]
    assert rows[0]["client_ip"] == "203.0.113.7"
    assert logged(trusting, client_ip="::FFFF:203.0.113.7") == rows  # the filter reads an address as the log writes it
    assert logged(trusting, timeout=0, client_ip="1.1.1.1") == []  # the spoofed hop is never the client
    page = requests.get(f"{trusting.url}/admin/dashboard", headers=ADMIN, timeout=10).text
    assert "<th scope=\"col\">Client</th>" in page and ">203.0.113.7<" in page


def test_without_trusted_proxies_a_spoofed_header_is_ignored(gateway: Gateway, fake_provider: FakeProvider) -> None:
    assert call(gateway, fake_provider, "cid-untrusted").status_code == 200
    assert access_line(gateway, "cid-untrusted")["client_ip"] == "127.0.0.1"
    rows = logged(gateway, trace_id="cid-untrusted")
    assert rows and rows[0]["client_ip"] == "127.0.0.1"
    assert "cid-untrusted" not in {row["trace_id"] for row in logged(gateway, timeout=0, client_ip="203.0.113.7")}


def test_no_forwarding_header_reaches_the_provider(trusting: Gateway, fake_provider: FakeProvider) -> None:
    assert call(trusting, fake_provider, "cid-upstream").status_code == 200  # a unified route
    headers = {"x-portkey-api-key": GATEWAY_KEY, "x-portkey-provider": "cohere",
               "x-portkey-custom-host": f"{fake_provider.url}/v1", "Authorization": f"Bearer {PROVIDER_SECRET}",
               **BEHIND_NGINX}
    proxied = requests.post(f"{trusting.url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=headers,
                            timeout=10)
    assert proxied.status_code == 200  # the catch-all proxy, which forwards the client's other headers
    for received in fake_provider.wait_for_requests(2):
        sent = {name.lower() for name in received.headers}
        assert not {h for h in sent if h in ("forwarded", "x-real-ip") or h.startswith("x-forwarded-")}, received.path


def test_a_streamed_answer_carries_x_accel_buffering(trusting: Gateway, fake_provider: FakeProvider) -> None:
    with call(trusting, fake_provider, "cid-stream", {**CHAT, "stream": True}) as res:
        assert res.headers["Content-Type"].startswith("text/event-stream")
        assert res.headers["X-Accel-Buffering"] == "no"
        assert "[DONE]" in res.text
    whole = call(trusting, fake_provider, "cid-whole")
    assert whole.status_code == 200 and "X-Accel-Buffering" not in whole.headers
