"""`make demo`: start the fake provider and the gateway, send sample calls through, print what came back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.procs import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = "pk-demo-key"


def wait_until_up(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait until a server answers, or fail with what it printed."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not come up at {url}")


def gateway_file(fake_url: str, workdir: str) -> str:
    """Return the demo's gateway file: one key, the fake provider as a catalog entry."""
    from app.settings import hash_key
    return f"""
[[keys]]
name = "demo"
sha256 = "{hash_key(DEMO_KEY)}"

[custom_hosts]
allow = ["127.0.0.1"]

[catalog.cohere-demo]
provider = "cohere"
api_key = "demo-cohere-secret"
custom_host = "{fake_url}/v1"

[logs]
path = "{workdir}/logs.sqlite"

[catalog.openai-demo]
provider = "openai"
api_key = "demo-openai-secret"
custom_host = "{fake_url}/v1"

[catalog.anthropic-demo]
provider = "anthropic"
api_key = "demo-anthropic-secret"
custom_host = "{fake_url}/v1"

[catalog.gemini-demo]
provider = "google"
api_key = "demo-gemini-secret"
custom_host = "{fake_url}"
"""


def show(title: str, response: requests.Response) -> None:
    """Print one call's status, gateway headers and body."""
    print(f"\n=== {title}")
    print(f"HTTP {response.status_code}  provider={response.headers.get('x-portkey-provider')}  "
          f"trace={response.headers.get('x-portkey-trace-id')}")
    try:
        print(json.dumps(response.json(), indent=2)[:800])
    except ValueError:
        print(response.text[:800])


def run_calls(gateway: str) -> None:
    """Send the sample calls of Portkey's proxy documentation through the gateway."""
    headers = {"x-portkey-api-key": DEMO_KEY, "x-portkey-provider": "@cohere-demo"}
    show("POST /v1/rerank (Model Catalog @cohere-demo)", requests.post(
        f"{gateway}/v1/rerank", headers=headers,
        json={"model": "rerank-v3.5", "query": "What is the capital of France?",
              "documents": ["Paris is the capital of France.", "Berlin is in Germany."]}))
    show("GET /v1/collections/my-collection", requests.get(f"{gateway}/v1/collections/my-collection",
                                                           headers=headers))
    show("PUT /v1/collections/my-collection", requests.put(f"{gateway}/v1/collections/my-collection",
                                                           headers=headers, json={"name": "my-collection"}))
    show("DELETE /v1/collections/my-collection", requests.delete(f"{gateway}/v1/collections/my-collection",
                                                                 headers=headers))
    chat = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "Say hello"}]}
    show("POST /v1/chat/completions (OpenAI format) to @anthropic-demo: translated both ways", requests.post(
        f"{gateway}/v1/chat/completions", headers={"x-portkey-api-key": DEMO_KEY,
                                                  "x-portkey-provider": "@anthropic-demo"}, json=chat))
    show("POST /v1/chat/completions to @gemini-demo: translated to generateContent", requests.post(
        f"{gateway}/v1/chat/completions", headers={"x-portkey-api-key": DEMO_KEY, "x-portkey-provider": "@gemini-demo"},
        json={**chat, "model": "gemini-2.5-flash"}))
    show("POST /v1/messages (Anthropic format) to @openai-demo: bridged through the unified chat", requests.post(
        f"{gateway}/v1/messages", headers={"x-portkey-api-key": DEMO_KEY, "x-portkey-provider": "@openai-demo"},
        json={**chat, "model": "gpt-4o-mini"}))
    stream("POST /v1/chat/completions, streamed (events printed as they arrive)", gateway, "@openai-demo",
           {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    stream("POST /v1/chat/completions to @anthropic-demo, streamed: Anthropic events become OpenAI chunks", gateway,
           "@anthropic-demo", {**chat, "stream": True})


def stream(title: str, gateway: str, provider: str, body: dict[str, object]) -> None:
    """Print a streamed call's events as they arrive."""
    print(f"\n=== {title}")
    start = time.monotonic()
    with requests.post(f"{gateway}/v1/chat/completions", stream=True,
                       headers={"x-portkey-api-key": DEMO_KEY, "x-portkey-provider": provider,
                                # ask the fake provider to pace its events, so the relay is visible
                                "x-fake-event-interval-ms": "150", "x-fake-events": "4",
                                "x-portkey-forward-headers": "x-fake-event-interval-ms, x-fake-events"},
                       json=body) as res:
        print(f"HTTP {res.status_code}  provider={res.headers.get('x-portkey-provider')}")
        for line in res.iter_lines():
            if line:
                print(f"  +{(time.monotonic() - start) * 1000:6.1f} ms  {line.decode()[:110]}")


def main() -> int:
    """Start both servers, run the calls, stop both servers."""
    fake_port, gw_port = free_port(), free_port()
    fake_url, gateway_url = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{gw_port}"
    workdir = tempfile.TemporaryDirectory(prefix="portico-demo-")
    config = Path(workdir.name) / "gateway.toml"
    config.write_text(gateway_file(fake_url, workdir.name))
    env = {**os.environ, "GATEWAY_CONFIG": str(config), "GATEWAY_BIND": f"127.0.0.1:{gw_port}",
           "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "8"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.fakes.provider", "--port", str(fake_port)],
                                      cwd=ROOT, stdout=subprocess.DEVNULL))
        wait_until_up(fake_url + "/v1/models", procs[0], "fake provider")
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], cwd=ROOT,
                                      env=env, stdout=subprocess.DEVNULL))
        wait_until_up(gateway_url + "/healthz", procs[1], "gateway")
        print(f"fake provider on {fake_url}, Portico on {gateway_url} (gateway key {DEMO_KEY})")
        run_calls(gateway_url)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
