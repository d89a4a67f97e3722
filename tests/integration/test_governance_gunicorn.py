"""Governance end to end (docs/governance.md): gunicorn with several workers, the state store, real clients.

Counters are exact across workers (SQLite) and across gateways (Redis); a streamed call holds its slot until
it ends; a single-token client (the openai SDK) calls with its gateway key alone.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.fakes.provider import FakeProvider
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import ADMIN_KEY, Gateway, gateway_toml

PRICED = '\n[pricing."openai/gpt-4o-mini"]\ninput = 1000.0\noutput = 1000.0\n'
CHAT = {"model": "@openai-fake/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def admin(gw: Gateway, method: str, path: str, body: object = None) -> requests.Response:
    """Call the admin API of a gateway."""
    return requests.request(method, gw.url + path, json=body, timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def new_key(gw: Gateway, **fields: object) -> str:
    """Create a managed key through the admin API; return its secret."""
    res = admin(gw, "POST", "/admin/keys", {"name": "gov-it", **fields})
    assert res.status_code == 201, res.text
    return str(res.json()["key"])


def chat(gw: Gateway, key: str, **extra: str) -> requests.Response:
    """Make one chat call with a gateway key sent as a Bearer token (a single-token client)."""
    return requests.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **extra})


def burst(gateways: list[Gateway], key: str, calls: int) -> list[int]:
    """Send `calls` chat calls at once, spread over the gateways; return their statuses."""
    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(lambda i: chat(gateways[i % len(gateways)], key).status_code, range(calls)))


def governed_toml(fake_url: str, extra: str = "") -> str:
    """Return the integration gateway file with prices, and models listed for the catalog's OpenAI entry."""
    toml = gateway_toml(fake_url, PRICED + extra)
    return toml.replace('[catalog.openai-fake]\n', '[catalog.openai-fake]\nmodels = ["gpt-4o-mini", "gpt-4o"]\n')


@pytest.fixture(scope="module")
def sqlite_gateway(fake: FakeProvider) -> Iterator[Gateway]:
    """A gateway of 4 workers on the default SQLite state store."""
    gw = Gateway(governed_toml(fake.url), workers=4, threads=16).start()
    yield gw
    gw.stop()


def test_rpm_admits_exactly_the_limit_across_workers(sqlite_gateway: Gateway, fake: FakeProvider) -> None:
    key = new_key(sqlite_gateway, limits={"rpm": 100})
    fake.reset()
    statuses = burst([sqlite_gateway], key, 400)
    assert statuses.count(200) == 100 and statuses.count(429) == 300, sorted(set(statuses))
    assert len(fake.requests) == 100


def test_budget_never_overspends_by_more_than_one_reservation(sqlite_gateway: Gateway) -> None:
    # Each call reserves about (input bytes / 4 + max_tokens) at 1000 USD per million tokens: ~0.05 USD, and
    # costs ~0.01 USD. Bursts of 50 run until the budget is spent; reservations bound what is in flight.
    key = new_key(sqlite_gateway, budget={"usd": 0.2, "period": "total"})
    key_id = next(k["id"] for k in admin(sqlite_gateway, "GET", "/admin/keys").json()["data"]
                  if k["name"] == "gov-it" and k["budget"] == {"usd": 0.2, "period": "total"})
    admitted = 0
    for _ in range(10):
        statuses = burst([sqlite_gateway], key, 50)
        assert set(statuses) <= {200, 429}
        assert statuses.count(200) < 50  # reservations refuse some of every burst
        admitted += statuses.count(200)
        usage = settled_usage(sqlite_gateway, key_id)
        if usage["spent_usd"] >= 0.2:
            break
    assert usage["reserved_usd"] == pytest.approx(0.0, abs=1e-9)  # every reservation reconciled
    assert 0.2 <= usage["spent_usd"] <= 0.2 + 0.06
    refused = chat(sqlite_gateway, key)
    assert refused.status_code == 429 and refused.json()["code"] == "budget_exceeded"
    assert admitted >= 15


def settled_usage(gw: Gateway, key_id: str) -> dict[str, float]:
    """Return a key's usage once every reservation of its finished calls is released (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        usage = admin(gw, "GET", f"/admin/keys/{key_id}").json()["usage"]
        if usage["reserved_usd"] == 0 or time.monotonic() > deadline:
            return dict(usage)
        time.sleep(0.05)


def test_a_stream_holds_its_slot_until_it_ends(sqlite_gateway: Gateway) -> None:
    key = new_key(sqlite_gateway, limits={"max_concurrent": 1})
    slow = {"x-fake-events": "10", "x-fake-event-interval-ms": "100",
            "x-portkey-forward-headers": "x-fake-events,x-fake-event-interval-ms"}
    stream = requests.post(sqlite_gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True,
                           timeout=30, headers={"Authorization": f"Bearer {key}", **slow})
    assert stream.status_code == 200
    lines = stream.iter_lines()
    next(lines)  # the stream is under way
    busy = chat(sqlite_gateway, key)
    assert busy.status_code == 429 and "max_concurrent" in busy.json()["message"]
    assert busy.headers["Retry-After"] == "1"
    assert b"[DONE]" in b"".join(lines)
    stream.close()
    deadline = time.monotonic() + 3
    while (status := chat(sqlite_gateway, key).status_code) == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_a_stream_the_client_cuts_frees_its_slot(sqlite_gateway: Gateway) -> None:
    key = new_key(sqlite_gateway, limits={"max_concurrent": 1})
    slow = {"x-fake-events": "50", "x-fake-event-interval-ms": "100",
            "x-portkey-forward-headers": "x-fake-events,x-fake-event-interval-ms"}
    body = json.dumps({**CHAT, "stream": True}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": "127.0.0.1", "Authorization": f"Bearer {key}", "Content-Type": "application/json",
        "Content-Length": str(len(body)), **slow}.items())
    with socket.create_connection(("127.0.0.1", sqlite_gateway.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode() + body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream is under way; then the client leaves
    deadline = time.monotonic() + 10
    while (status := chat(sqlite_gateway, key).status_code) == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_openai_sdk_calls_with_its_gateway_key_alone(sqlite_gateway: Gateway, fake: FakeProvider) -> None:
    key = new_key(sqlite_gateway, models=["@openai-fake/*"], limits={"rpm": 1000, "tpm": 1_000_000})
    client = openai.OpenAI(api_key=key, base_url=sqlite_gateway.url + "/v1", max_retries=0)
    fake.reset()
    raw = client.chat.completions.with_raw_response.create(model="@openai-fake/gpt-4o-mini",
                                                             messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= 1_000_000
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-catalog-openai-secret"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-portkey-provider": "openai"})
    assert refused.value.body is None or "model_not_allowed" in json.dumps(refused.value.body) \
        or "model_not_allowed" in refused.value.response.text
    models = client.models.list()
    assert [m.id for m in models.data] == ["@openai-fake/gpt-4o-mini", "@openai-fake/gpt-4o"]


def test_a_revoked_key_stops_on_every_worker_within_a_second(sqlite_gateway: Gateway) -> None:
    key = new_key(sqlite_gateway)
    assert all(status == 200 for status in burst([sqlite_gateway], key, 8))
    key_id = next(k["id"] for k in admin(sqlite_gateway, "GET", "/admin/keys").json()["data"]
                  if k["name"] == "gov-it" and not k["revoked"] and not k["limits"] and not k["budget"]
                  and not k["models"])
    assert admin(sqlite_gateway, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    time.sleep(1.0)
    assert set(burst([sqlite_gateway], key, 16)) == {401}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the state store."""
    with RedisServer() as server:
        yield server


def test_two_gateways_on_redis_admit_exactly_the_limit(fake: FakeProvider, redis_server: RedisServer) -> None:
    extra = f'\n[state]\nbackend = "{redis_server.url}"\n'
    first = Gateway(governed_toml(fake.url, extra), workers=2, threads=16).start()
    second = Gateway(governed_toml(fake.url, extra), workers=2, threads=16).start()
    try:
        key = new_key(first, limits={"rpm": 100})
        time.sleep(1.0)  # the second gateway reads the new key within a second
        fake.reset()
        statuses = burst([first, second], key, 400)
        assert statuses.count(200) == 100 and statuses.count(429) == 300, sorted(set(statuses))
        assert len(fake.requests) == 100
    finally:
        first.stop()
        second.stop()


def test_managed_keys_survive_a_restart(fake: FakeProvider) -> None:
    gw = Gateway(governed_toml(fake.url)).start()
    try:
        key = new_key(gw, budget={"usd": 100, "period": "month"})
        assert chat(gw, key).status_code == 200
        gw.stop()
        gw.start()
        assert chat(gw, key).status_code == 200
        listed = [k for k in admin(gw, "GET", "/admin/keys").json()["data"] if k["name"] == "gov-it"]
        assert listed[0]["usage"]["spent_usd"] > 0
    finally:
        gw.stop()


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Run curl; return the status, the headers (lower-case names) and the body."""
    done = subprocess.run(["curl", "-sS", "-D", "-", *args], capture_output=True, text=True, timeout=30, check=True)
    head, _, body = done.stdout.partition("\n\n")  # text mode: curl's CRLFs arrive as \n
    lines = head.split("\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_curl_manages_a_key_and_calls_with_it(sqlite_gateway: Gateway) -> None:
    auth = f"Authorization: Bearer {ADMIN_KEY}"
    status, _, body = curl(sqlite_gateway.url + "/admin/keys", "-H", auth, "-H", "Content-Type: application/json",
                           "-d", '{"name": "curl-team", "models": ["*/gpt-4o-mini"], "limits": {"rpm": 2}}')
    assert status == 201
    created = json.loads(body)
    call = [sqlite_gateway.url + "/v1/chat/completions", "-H", f"Authorization: Bearer {created['key']}",
            "-H", "Content-Type: application/json", "-d", json.dumps(CHAT)]
    status, headers, _ = curl(*call)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "1"
    status, _, body = curl(*call[:-1], json.dumps({**CHAT, "model": "@openai-fake/gpt-4o"}))
    assert status == 403 and json.loads(body)["code"] == "model_not_allowed"
    assert curl(*call)[0] == 200
    status, headers, body = curl(*call)
    assert status == 429 and json.loads(body)["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
    status, _, body = curl(sqlite_gateway.url + f"/admin/keys/{created['id']}", "-H", auth)
    assert status == 200 and json.loads(body)["usage"]["requests_last_60s"] == 2
    assert created["key"] not in body
    status, _, body = curl(sqlite_gateway.url + "/v1/models", "-H", f"Authorization: Bearer {created['key']}")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["@openai-fake/gpt-4o-mini"]
    assert curl("-X", "DELETE", sqlite_gateway.url + f"/admin/keys/{created['id']}", "-H", auth)[0] == 200
    time.sleep(1.0)
    assert curl(*call)[0] == 401


def test_the_default_cache_hits_whichever_worker_a_repeat_lands_on(sqlite_gateway: Gateway,
                                                                   fake: FakeProvider) -> None:
    config = json.dumps({"provider": "@openai-fake", "cache": {"mode": "simple", "max_age": 60}})
    body = {**CHAT, "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"cache {time.time()}"}]}
    key = new_key(sqlite_gateway)

    def call() -> str:
        with requests.Session() as fresh:  # a new connection each time: any of the 4 workers may take it
            res = fresh.post(sqlite_gateway.url + "/v1/chat/completions", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {key}", "x-portkey-config": config})
            assert res.status_code == 200
            return res.headers["x-portkey-cache-status"]
    fake.reset()
    assert call() == "MISS"
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: call(), range(40)))
    assert statuses == ["HIT"] * 40
    assert len(fake.requests) == 1
