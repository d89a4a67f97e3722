"""The hardening section: a hostile regex, decompression bombs and slow clients, measured through gunicorn.

Each figure is taken three times (a fresh attack each time) and shown as median with min-max spread:
- the pathological pattern `(a+)+$` on 10 KB of input, through a conditional config (target: well under 1 s);
- peak RSS growth of the worker for each decode path fed a gzip bomb (target <= 64 MiB each);
- `/healthz` p99 on fresh connections while 200 slow sockets trickle their request heads (target <= 50 ms).
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time
import zlib
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.plan import Plan
from bench.procfs import children
from bench.procs import LOOPBACK, BenchError, Procs
from bench.report import Report, verdict
from bench.targets import BENCH_KEY, Server, start_portico

RUNS = 3
REDOS_INPUT = "a" * 10_240 + "!"
REDOS_MAX_S = 1.0
BOMB_MAX_MIB = 64.0
BOMB_BYTES = 1 << 30  # what the bomb inflates to: 1 GiB of JSON whitespace from about 1 MiB of gzip
SLOW_SOCKETS = 200
SLOW_BYTE_EVERY_S = 5.0
HEALTHZ_CALLS = 100
HEALTHZ_P99_MAX_MS = 50.0
CALL_TIMEOUT_S = 30.0

CHAT = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
CHAT_BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
SSE_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
# Each decode path: (name, provider, config extra, what the hostile upstream answers, stream or not).
BOMB_PATHS: tuple[tuple[str, str, dict[str, Any], str, bool], ...] = (
    ("translated answer", "anthropic", {}, "200", False),
    ("output guardrail", "openai", {"output_guardrails": [{"default.wordCount": {"minWords": 1}}]}, "200", False),
    ("error body", "anthropic", {}, "400", False),
    ("cache store", "openai", {"cache": {"mode": "simple", "max_age": 60}}, "200", False),
    ("translated stream", "anthropic", {}, "sse", True),
)


def make_bomb(unit: bytes = b" ") -> bytes:
    """Return about 1 MiB of gzip that inflates to BOMB_BYTES of `unit` repeated (spaces: valid leading JSON)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = unit * ((1 << 20) // len(unit))
    parts = [packer.compress(block) for _ in range(BOMB_BYTES // len(block))]
    return b"".join(parts) + packer.flush()


class _Hostile(BaseHTTPRequestHandler):
    """An upstream a client points a custom host at: chat answers, or gzip bombs under /bomb/<status or sse>/."""

    protocol_version = "HTTP/1.1"
    bomb = b""
    sse_bomb = b""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        """Answer a chat call: a bomb under /bomb/<status>/ or /bomb/sse/, else a small chat.completion."""
        self.rfile.read(int(self.headers.get("content-length") or 0))
        kind = self.path.split("/")[2] if self.path.startswith("/bomb/") else ""
        if kind == "sse":
            self._send(200, self.sse_bomb, {"Content-Encoding": "gzip"}, "text/event-stream")
        elif kind:
            self._send(int(kind), self.bomb, {"Content-Encoding": "gzip"})
        else:
            self._send(200, json.dumps(CHAT).encode(), {})

    def _send(self, status: int, body: bytes, extra: dict[str, str], media: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Stay quiet."""


class _QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that does not print the resets of a gateway refusing a bomb mid-body."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Ignore a client that went away: refusing the rest of a bomb is what the gateway should do."""


def start_hostile() -> tuple[ThreadingHTTPServer, str]:
    """Start the hostile upstream on loopback in a thread; return it and its URL."""
    _Hostile.bomb = make_bomb()
    _Hostile.sse_bomb = make_bomb(SSE_PING)
    server = _QuietServer((LOOPBACK, 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{LOOPBACK}:{server.server_address[1]}"


def post(port: int, path: str, headers: dict[str, str], body: dict) -> tuple[int, float, bytes]:
    """POST JSON to the gateway; return the status, seconds taken and the body (status 0 on a transport failure)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=CALL_TIMEOUT_S)
    started = time.perf_counter()
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        data = response.read()
        return response.status, time.perf_counter() - started, data
    except OSError:
        return 0, time.perf_counter() - started, b""
    finally:
        conn.close()


def chat_headers(provider: str, host: str, config: dict | None = None) -> dict[str, str]:
    """Return the headers of a unified chat call through a config with one target on `host`."""
    target = {"provider": provider, "custom_host": host, **(config or {})}
    return {"x-portkey-api-key": BENCH_KEY, "Authorization": "Bearer x", "x-api-key": "x",
            "x-portkey-config": json.dumps({"targets": [target]})}


def spread(values: list[float], unit: str, digits: int = 0) -> str:
    """Return 'median unit (min-max)' of three runs."""
    return (f"{statistics.median(values):.{digits}f} {unit} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def redos(report: Report, portico: Server, upstream: str) -> bool:
    """Time the pathological pattern on 10 KB of input, through a conditional config."""
    config = {"strategy": {"mode": "conditional", "default": "b",
                           "conditions": [{"query": {"params.probe": {"$regex": "(a+)+$"}}, "then": "a"}]},
              "targets": [{"name": "a", "provider": "openai", "custom_host": f"{upstream}/v1"},
                          {"name": "b", "provider": "openai", "custom_host": f"{upstream}/v1"}]}
    headers = {"x-portkey-api-key": BENCH_KEY, "Authorization": "Bearer x", "x-portkey-config": json.dumps(config)}
    seconds, statuses = [], set()
    for _ in range(RUNS):
        status, took, _ = post(portico.port, "/v1/chat/completions", headers, {**CHAT_BODY, "probe": REDOS_INPUT})
        statuses.add(status)
        seconds.append(took)
    ok = max(seconds) < REDOS_MAX_S and statuses <= {200, 400}
    report.say(f"1. regex (a+)+$ on {len(REDOS_INPUT)} bytes, conditional routing: {spread(seconds, 's', 3)}, "
               f"statuses {sorted(statuses)} (target < {REDOS_MAX_S:.0f} s each)  {verdict(ok)}")
    return ok


def peak_rss_growth_mib(worker: int, call: Callable[[], tuple[int, float, bytes]]) -> tuple[float, int]:
    """Reset the worker's peak RSS, make the call, and return (peak growth in MiB, status)."""
    status_path = Path(f"/proc/{worker}/status")
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib(status_path, "VmRSS:")
    status = call()[0]
    return max(0, _status_kib(status_path, "VmHWM:") - before) / 1024, status


def _status_kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise BenchError(f"no {field} in {path}")


def bombs(report: Report, portico: Server, upstream: str) -> list[bool]:
    """Feed each decode path a gzip bomb and show the worker's peak RSS growth."""
    workers = children(portico.proc.pid)
    if len(workers) != 1:
        raise BenchError(f"the bomb gateway should have one worker, found {workers}")
    report.say(f"2. gzip bombs ({len(_Hostile.bomb) / 2**20:.1f} MiB inflating to {BOMB_BYTES >> 20} MiB), "
               "peak RSS growth of the worker per call:")
    verdicts = []
    for name, provider, extra, kind, stream in BOMB_PATHS:
        growth, seen = [], set()
        body = {**CHAT_BODY, "stream": True} if stream else CHAT_BODY
        for _ in range(RUNS):
            headers = chat_headers(provider, f"{upstream}/bomb/{kind}/v1", extra)
            call = partial(post, portico.port, "/v1/chat/completions", headers, body)
            mib, answered = peak_rss_growth_mib(workers[0], call)
            growth.append(mib)
            seen.add(answered)
        ok = max(growth) <= BOMB_MAX_MIB and 0 not in seen and 500 not in seen
        report.say(f"   {name:<18} {spread(growth, 'MiB', 1):<22} statuses {sorted(seen)} "
                   f"(target <= {BOMB_MAX_MIB:.0f} MiB, a clear error)  {verdict(ok)}")
        verdicts.append(ok)
    return verdicts


def slow_clients(report: Report, portico: Server) -> bool:
    """Hold SLOW_SOCKETS sockets that trickle a request head, and time /healthz on fresh connections."""
    p99s = []
    for _ in range(RUNS):
        sockets = _open_slow(portico.port)
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(sockets, stop), daemon=True)
        trickler.start()
        try:
            time.sleep(1.0)  # let the gateway take them all in
            p99s.append(_healthz_p99_ms(portico.port))
        finally:
            stop.set()
            trickler.join()
            for sock in sockets:
                sock.close()
    ok = max(p99s) <= HEALTHZ_P99_MAX_MS
    report.say(f"3. /healthz p99 on fresh connections with {SLOW_SOCKETS} slow sockets open (a byte every "
               f"{SLOW_BYTE_EVERY_S:.0f} s): {spread(p99s, 'ms', 1)} (target <= {HEALTHZ_P99_MAX_MS:.0f} ms)  "
               f"{verdict(ok)}")
    return ok


def _open_slow(port: int) -> list[socket.socket]:
    sockets = []
    for _ in range(SLOW_SOCKETS):
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
        sock.sendall(b"G")
        sockets.append(sock)
    return sockets


def _trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    head = b"ET /healthz HTTP/1.1\r\nHost: bench\r\n"
    sent = 0
    while not stop.wait(SLOW_BYTE_EVERY_S) and sent < len(head):
        for sock in sockets:
            try:
                sock.sendall(head[sent:sent + 1])
            except OSError:
                pass  # the gateway cut it: that is its right
        sent += 1


def _healthz_p99_ms(port: int) -> float:
    times = []
    for _ in range(HEALTHZ_CALLS):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=CALL_TIMEOUT_S)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            times.append((time.perf_counter() - started) * 1000)
        except OSError:
            times.append(CALL_TIMEOUT_S * 1000)
        finally:
            conn.close()
        time.sleep(0.02)
    return statistics.quantiles(times, n=100)[98]


def hardening(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Run the hardening figures against gateways on the hostile upstream."""
    report.section("Hardening (hostile regex, decompression bombs, slow clients; 3 runs each: median (min-max))")
    hostile, upstream = start_hostile()
    verdicts: list[bool] = []
    try:
        one = start_portico(procs, workdir, 1, plan.threads, None, name="portico-hardening")
        try:
            verdicts.append(redos(report, one, upstream))
            verdicts += bombs(report, one, upstream)
        finally:
            procs.stop(one.proc)
        report.note("slow clients")
        full = start_portico(procs, workdir, plan.workers, plan.threads, None, name="portico-slow-clients")
        try:
            report.say(f"   (gateway: {plan.workers} workers x {plan.threads} threads)")
            verdicts.append(slow_clients(report, full))
        finally:
            procs.stop(full.proc)
    finally:
        hostile.shutdown()
    return verdicts

