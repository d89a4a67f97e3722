"""wrk runs: a generated Lua script POSTs a small JSON body and prints its own summary as one JSON line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, pinned, run_bounded

RERANK_BODY = json.dumps({"model": "rerank-v3.5", "query": "what is a gateway",
                          "documents": ["a gateway forwards calls", "bananas are yellow"]},
                         separators=(",", ":"))
_MARK = "BENCH_SUMMARY "

_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    "{mark}", summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, rate, latency percentiles and error counts."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    bad_status: int

    @property
    def rps(self) -> float:
        """Return completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def _lua_string(text: str) -> str:
    """Return text as a Lua string literal."""
    return json.dumps(text)  # a JSON string with only ASCII escapes is a valid Lua literal


def write_script(path: Path, headers: dict[str, str], body: str = RERANK_BODY) -> Path:
    """Write a wrk script that POSTs body with headers and prints a JSON summary when done."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + _DONE.replace("{mark}", _MARK))
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: float, threads: int,
            cpus: str | None) -> WrkResult:
    """Run wrk against url for the given time and return its summary."""
    threads = max(1, min(threads, connections))
    duration = f"{max(1, round(seconds))}s"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--timeout", "5s", "--latency",
           "-s", str(script), url]
    out = run_bounded(pinned(cmd, cpus), timeout=seconds + 30)
    return _parse(out)


def _parse(out: str) -> WrkResult:
    """Read the JSON summary line that the script's done() printed."""
    for line in out.splitlines():
        if line.startswith(_MARK):
            data = json.loads(line[len(_MARK):])
            errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
            return WrkResult(requests=data["requests"], seconds=data["duration_us"] / 1e6,
                             p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
                             errors=errors, bad_status=data["status"])
    raise BenchError(f"wrk printed no summary:\n{out[-1500:]}")
