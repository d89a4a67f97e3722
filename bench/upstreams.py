"""Upstreams on loopback: nginx answering fixed rerank and chat bodies (fast), or the Python fake provider."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import LOOPBACK, BenchError, Proc, Procs, ensure_tool, free_port, pinned, wait_http

ROOT = Path(__file__).resolve().parents[1]
RERANK_ANSWER = {
    "id": "bench-rerank",
    "results": [{"index": 0, "relevance_score": 0.91}, {"index": 1, "relevance_score": 0.12}],
    "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
}
FAIL_PATH = "/fail/v1/rerank"  # answers 503 at once: the failing first target of the fallback runs
FAIL_ANSWER = {"error": {"message": "bench: overloaded", "type": "server_error", "code": 503}}
CHAT_PATH = "/v1/chat/completions"  # a fixed small chat.completion: the guardrail runs (unified route)
CHAT_ANSWER = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny and mild in Paris today, 21 C."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 11, "total_tokens": 25},
}
MESSAGES_PATH = "/v1/messages"  # the same answer in Anthropic's shape: the translated unified chat runs
MESSAGES_ANSWER = {
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
    "content": [{"type": "text", "text": "Sunny and mild in Paris today, 21 C."}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 14, "output_tokens": 11},
}
STATUS_PATH = "/bench/nginx-status"  # nginx's stub_status: how many requests it has served


@dataclass
class Upstream:
    """A running upstream: what it is, where it listens, its process."""

    label: str
    port: int
    proc: Proc
    serves_fail: bool = False  # answers 503 on FAIL_PATH (nginx only)
    serves_chat: bool = False  # answers CHAT_ANSWER on CHAT_PATH (nginx only)

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:54321."""
        return f"http://{LOOPBACK}:{self.port}"


def nginx_conf(workdir: Path, port: int) -> str:
    """Return an nginx config on loopback only: fixed JSON for /v1/rerank and CHAT_PATH (200), FAIL_PATH (503)."""
    body, fail, chat, message = (json.dumps(answer, separators=(",", ":")).replace("'", "\\'")
                                 for answer in (RERANK_ANSWER, FAIL_ANSWER, CHAT_ANSWER, MESSAGES_ANSWER))
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen {LOOPBACK}:{port};
        default_type application/json;
        location = /v1/rerank {{ return 200 '{body}'; }}
        location = {FAIL_PATH} {{ return 503 '{fail}'; }}
        location = {CHAT_PATH} {{ return 200 '{chat}'; }}
        location = {MESSAGES_PATH} {{ return 200 '{message}'; }}
        location = {STATUS_PATH} {{ stub_status; }}
        location / {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""


def requests_served(upstream: Upstream) -> int:
    """Return how many requests nginx has served so far, this one included (from stub_status)."""
    conn = http.client.HTTPConnection(LOOPBACK, upstream.port, timeout=5)
    try:
        conn.request("GET", STATUS_PATH)
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    lines = text.splitlines()  # "Active connections: 1", "server accepts handled requests", " 3 3 7", ...
    if len(lines) < 3 or len(lines[2].split()) != 3:
        raise BenchError(f"unexpected nginx stub_status answer: {text[:200]!r}")
    return int(lines[2].split()[2])


def nginx_version(binary: str) -> str:
    """Return e.g. 'nginx 1.22.1'."""
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().replace("nginx version: nginx/", "nginx ")


def start_nginx(procs: Procs, workdir: Path, cpus: str | None) -> Upstream | None:
    """Start nginx with a config in workdir; None when nginx is not installed and cannot be."""
    binary = ensure_tool("nginx", "nginx-light")
    if binary is None:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port))
    cmd = [binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    proc = procs.start("nginx", pinned(cmd, cpus), stderr=workdir / "nginx.stderr")
    wait_http(proc, port)
    label = (f"{nginx_version(binary)} (fixed JSON: 200 for /v1/rerank, {CHAT_PATH}, {MESSAGES_PATH}; "
             f"503 for {FAIL_PATH}; 1 worker)")
    return Upstream(label, port, proc, serves_fail=True, serves_chat=True)


def start_fake(procs: Procs, workdir: Path, cpus: str | None, name: str = "fake-provider") -> Upstream:
    """Start the Python fake provider (tests/fakes/provider.py, record=False) on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.fakes.provider", "--host", LOOPBACK, "--port", str(port)]
    proc = procs.start(name, pinned(cmd, cpus), cwd=ROOT, stderr=workdir / f"{name}.stderr")
    wait_http(proc, port)
    return Upstream("Python fake provider (tests/fakes/provider.py, ThreadingHTTPServer)", port, proc)
