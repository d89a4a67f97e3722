"""A spooled request body's temporary file is closed once the call is over, not left to garbage collection."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest
import responses
from flask.testing import FlaskClient
from responses.registries import OrderedRegistry

from tests.conftest import PROVIDER_SECRET, gw_headers

A = "https://a.example.com/v1"
B = "https://b.example.com/v1"
SPOOL_AT = 64  # bytes held in memory; every body below is larger, so it goes to a temporary file
BODY = json.dumps({"model": "m", "query": "q" * 500}).encode()


@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> list[IO[bytes]]:
    """Return the temporary files the gateway opens, held here so garbage collection cannot close them."""
    opened: list[IO[bytes]] = []
    real = tempfile.TemporaryFile

    def keep(*args: Any, **kwargs: Any) -> IO[bytes]:
        file = real(*args, **kwargs)
        opened.append(file)
        return file
    monkeypatch.setattr(tempfile, "TemporaryFile", keep)
    return opened


@pytest.fixture
def script() -> Iterator[responses.RequestsMock]:
    """Yield an ordered `responses` mock: calls must come in the registered order, and all must come."""
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client(app_factory: Callable[..., Any]) -> FlaskClient:
    """Return a client that spools bodies over SPOOL_AT bytes, its test hosts resolving to a public address."""
    app = app_factory(spool_memory_bytes=SPOOL_AT)
    app.extensions["portico"].policy._resolver = lambda *a, **k: [(2, 1, 6, "", ("93.184.215.14", 443))]
    return app.test_client()


def call(client: FlaskClient, config: dict[str, Any], body: bytes = BODY) -> Any:
    """Send one call and read its answer to the end; the caller closes it, as the server does once it is sent."""
    res = client.post("/v1/rerank", data=body,
                      headers={**gw_headers(x_portkey_config=json.dumps(config)), "Content-Type": "application/json",
                               "Authorization": f"Bearer {PROVIDER_SECRET}"})
    res.get_data()
    return res


def answering(received: list[bytes], status: int) -> Callable[[Any], tuple[int, dict[str, str], str]]:
    """Return a `responses` callback that keeps the body it was sent (read now: a file is rewound per attempt)."""
    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body
        received.append(body if isinstance(body, bytes) else body.read())
        return status, {"Content-Type": "application/json"}, json.dumps({"results": [], "status": status})
    return reply


@pytest.mark.parametrize("config", [
    {"provider": "cohere", "custom_host": A, "retry": {"attempts": 2}},
    {"strategy": {"mode": "fallback"}, "targets": [{"provider": "cohere", "custom_host": A},
                                                    {"provider": "cohere", "custom_host": B}]},
], ids=["retry", "fallback"])
def test_body_replayed_per_attempt_is_closed_when_the_call_ends(client, script, spooled, config) -> None:
    received: list[bytes] = []
    script.add_callback("POST", f"{A}/rerank", answering(received, 503))
    second = A if "retry" in config else B
    script.add_callback("POST", f"{second}/rerank", answering(received, 200))
    res = call(client, config)
    assert res.status_code == 200
    assert received == [BODY, BODY]  # the file stays open across attempts: each one sent the whole body
    assert len(spooled) == 1
    res.close()  # what gunicorn does once the answer is sent
    assert spooled[0].closed


def test_body_is_closed_after_a_cache_hit(client, script, spooled) -> None:
    received: list[bytes] = []
    script.add_callback("POST", f"{A}/rerank", answering(received, 200))
    config = {"provider": "cohere", "custom_host": A, "cache": {"mode": "simple", "max_age": 60}}
    first = call(client, config)
    first.close()
    hit = call(client, config)
    assert hit.headers["x-portkey-cache-status"] == "HIT"
    hit.close()
    assert len(received) == 1 and len(spooled) == 2
    assert all(file.closed for file in spooled)


def test_body_is_closed_when_the_call_is_refused_after_spooling(client, spooled) -> None:
    res = call(client, {"provider": "cohere", "custom_host": A, "retry": {"attempts": "many"}})
    assert res.status_code == 400
    res.close()
    assert len(spooled) == 1 and spooled[0].closed
