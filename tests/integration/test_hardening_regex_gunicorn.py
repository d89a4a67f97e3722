"""Through gunicorn: a pathological client regex answers at once and does not stall a stream on the same worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import GATEWAY_KEY, PROVIDER_SECRET
from tests.fakes.provider import FakeProvider
from tests.integration.conftest import Gateway, gateway_toml

EVIL = "(a+)+$"  # on Python's re, 31 characters froze a worker for 122 s until gunicorn killed it
VICTIM = "a" * 10_000 + "!"
EVENTS, INTERVAL_MS = 20, 100


@pytest.fixture(scope="module")
def lone_worker(fake: FakeProvider) -> Iterator[Gateway]:
    """Run a gateway with one worker and a few threads, so the stream and the regex share a worker."""
    gw = Gateway(gateway_toml(fake.url), workers=1, threads=4).start()
    yield gw
    gw.stop()


def headers(fake: FakeProvider, **extra: str) -> dict[str, str]:
    return {"x-portkey-api-key": GATEWAY_KEY, "Authorization": f"Bearer {PROVIDER_SECRET}",
            "x-portkey-provider": "openai", "x-portkey-custom-host": f"{fake.url}/v1", **extra}


def stream_arrivals(gateway: Gateway, fake: FakeProvider, first: threading.Event, arrivals: list[float]) -> None:
    """Read a slow stream, noting when each event arrives; set `first` at the first one."""
    extra = {"x-fake-events": str(EVENTS), "x-fake-event-interval-ms": str(INTERVAL_MS),
             "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"}
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers(fake, **extra),
                       stream=True, timeout=20) as res:
        for line in res.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic())
                first.set()


def evil_config(fake: FakeProvider) -> dict[str, object]:
    """Return a config whose routing condition, guardrail and mutator all run EVIL over the message."""
    target = {"provider": "openai", "custom_host": f"{fake.url}/v1"}
    return {"strategy": {"mode": "conditional", "default": "plain",
                         "conditions": [{"query": {"params.messages.0.content": {"$regex": EVIL}}, "then": "evil"}]},
            "targets": [{"name": "evil", **target}, {"name": "plain", **target}],
            "input_guardrails": [{"default.regexMatch": {"rule": EVIL, "not": True}}],
            "before_request_hooks": [{"id": "redact", "type": "mutator", "checks": [
                {"id": "default.regexReplace", "parameters": {"rule": EVIL}}]}]}


def test_pathological_regex_answers_at_once_and_the_stream_keeps_flowing(lone_worker: Gateway,
                                                                         fake_provider: FakeProvider) -> None:
    first, arrivals = threading.Event(), list[float]()
    config = json.dumps(evil_config(fake_provider))
    reader = threading.Thread(target=stream_arrivals, args=(lone_worker, fake_provider, first, arrivals))
    reader.start()
    try:
        assert first.wait(10), "the stream did not start"
        started = time.monotonic()
        res = requests.post(f"{lone_worker.url}/v1/chat/completions", timeout=10,
                            json={"model": "m", "messages": [{"role": "user", "content": VICTIM}]},
                            headers=headers(fake_provider, **{"x-portkey-config": config}))
        took = time.monotonic() - started
    finally:
        reader.join(20)
    assert res.status_code == 200, res.text
    assert res.headers["x-portkey-last-used-option-index"] == "config.targets[1]"  # the condition did not match
    assert took < 3.0
    assert len(arrivals) >= EVENTS + 1  # every content event, the finish event and [DONE]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < 1.0, gaps  # the regex did not hold the worker's other threads
