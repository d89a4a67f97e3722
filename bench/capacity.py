"""The capacity section: a thousand concurrent streams, CPU per relayed event, memory (issue 12's targets).

Portico runs with the gateway's own defaults (app/settings.py: default_workers() x Settings.threads), unpinned,
against bench/capacity_upstream.py (asyncio: one process holds every stream). The load generator is
bench/capacity_load.py: raw asyncio sockets in this process, not a thread per stream.
- 1,000 streams of 50 events 200 ms apart through /v1/chat/completions (OpenAI passthrough via a custom host),
  started over RAMP_S, while a short non-streamed call is made every 100 ms; RSS of master + workers is sampled.
- The head-of-line case: 100 such streams while 10 MB request bodies and 10 MB answers go on back to back.
- CPU per relayed event: 100 streams x 100 events, CPU seconds of the gunicorn tree (/proc) per event, for the
  floor (bench/floor_app.py, same gunicorn settings), the passthrough, and a translated (Anthropic) stream.
Each figure: median (min-max) over RUNS runs, one run with --quick.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings, default_workers
from bench.capacity_load import StreamResult, large_calls, one_stream, short_calls
from bench.plan import Plan
from bench.procfs import children, rss_kib, tree_cpu_seconds
from bench.procs import Procs, free_port, wait_http
from bench.report import Report, verdict
from bench.targets import Server, start_floor, start_portico
from bench.translation import provider_headers

RUNS = 3
STREAMS, EVENTS, INTERVAL_MS = 1000, 50, 200
# The streams start evenly over the first RAMP_S (200 new streams a second), so all 1,000 are held together
# from then until the first ones end at 10 s (docs/benchmarks.md, Capacity, says why not all in one instant).
RAMP_S = 5.0
STREAM_TIMEOUT_S = 120.0  # a stream not done by then counts as an error
HOL_STREAMS, HOL_BYTES = 100, 10 * 1024 * 1024  # the head-of-line case: 100 streams beside two 10 MB transfers
SHORT_EVERY_S = 0.1
CPU_STREAMS, CPU_EVENTS, CPU_INTERVAL_MS = 100, 100, 20
TTFB_MAX_MS, DELAY_MAX_MS, SHORT_MAX_MS = 250.0, 100.0, 100.0
RSS_MAX_MIB, RSS_SETTLE = 1024.0, 0.10
PASS_OVER_US, TRANSLATED_OVER_US, PASS_AIM_US = 20.0, 60.0, 60.0


@dataclass
class HeldRun:
    """One run of the 1,000 streams."""

    errors: int
    complete: int
    ttfb_p99: float
    delay_p99: float
    short_p99: float
    rss_idle: float
    rss_held: float
    rss_after: float
    error_kinds: Counter[str]


def p99(values: list[float]) -> float:
    """Return the 99th percentile (inf when empty)."""
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else (values[0] if values else float("inf"))


def spread(values: list[float], unit: str, digits: int = 0) -> str:
    """Return 'median unit (min-max)'."""
    unit = f" {unit}" if unit else ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def tree_rss_mib(master: int) -> float:
    """Return the summed RSS of a gunicorn master and its workers in MiB."""
    total = 0
    for pid in (master, *children(master)):
        try:
            total += rss_kib(pid)
        except OSError:
            continue
    return total / 1024


def raise_open_files() -> None:
    """Lift the soft open-files limit to the hard one; gunicorn and the upstream inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_upstream(procs: Procs, workdir: Path) -> str:
    """Start bench/capacity_upstream.py and return its base URL."""
    port = free_port()
    proc = procs.start("capacity-upstream", [sys.executable, "-m", "bench.capacity_upstream", "--port", str(port)],
                       cwd=Path(__file__).resolve().parents[1], stderr=workdir / "capacity-upstream.stderr")
    wait_http(proc, port)
    return f"http://127.0.0.1:{port}"


def paced(headers: dict[str, str], events: int, interval_ms: int) -> dict[str, str]:
    """Return headers asking the upstream for `events` events `interval_ms` apart."""
    # Portico forwards only the headers a call names (x-portkey-forward-headers); the floor forwards every one.
    return {**headers, "x-fake-events": str(events), "x-fake-event-interval-ms": str(interval_ms),
            "x-portkey-forward-headers": "x-fake-events, x-fake-event-interval-ms"}


async def _hold(server: Server, headers: dict[str, str]) -> tuple[list[StreamResult], list[float], float]:
    """Run the streams and the short calls together; return results, short-call ms and the peak RSS."""
    stop = asyncio.Event()
    shorts = asyncio.create_task(short_calls(server.port, headers, SHORT_EVERY_S, stop))
    streams = asyncio.gather(*(later(i * RAMP_S / STREAMS, one_stream(
        server.port, "/v1/chat/completions", paced(headers, EVENTS, INTERVAL_MS), EVENTS, STREAM_TIMEOUT_S))
        for i in range(STREAMS)))
    peak = 0.0
    while not streams.done():
        peak = max(peak, tree_rss_mib(server.proc.pid))
        await asyncio.wait([streams], timeout=0.5)
    stop.set()
    return streams.result(), await shorts, peak


async def later(delay: float, call: Coroutine[Any, Any, StreamResult]) -> StreamResult:
    """Run call after delay seconds."""
    await asyncio.sleep(delay)
    return await call


def head_of_line_run(server: Server, headers: dict[str, str]) -> tuple[float, int, int]:
    """Run 100 streams while a 10 MB upload and a 10 MB download go on back to back; return delay p99 and counts."""
    async def run() -> tuple[list[StreamResult], int, int]:
        stop = asyncio.Event()
        big = [asyncio.create_task(large_calls(server.port, headers, HOL_BYTES, upload, stop))
               for upload in (True, False)]
        await asyncio.sleep(0.5)  # both transfers under way before the streams start
        streams = await asyncio.gather(*(one_stream(server.port, "/v1/chat/completions",
                                                    paced(headers, EVENTS, INTERVAL_MS), EVENTS, STREAM_TIMEOUT_S)
                                         for _ in range(HOL_STREAMS)))
        stop.set()
        uploads, downloads = await asyncio.gather(*big)
        return streams, uploads, downloads
    results, uploads, downloads = asyncio.run(run())
    if any(r.error or not r.complete for r in results):
        return float("inf"), uploads, downloads
    return p99([d for r in results for d in r.delays_ms]), uploads, downloads


def warm_up(server: Server, headers: dict[str, str]) -> None:
    """Serve a few hundred streams and short calls first: idle RSS is a warmed gateway's, not a fresh one's."""
    async def run() -> None:
        stop = asyncio.Event()
        shorts = asyncio.create_task(short_calls(server.port, headers, SHORT_EVERY_S, stop))
        await asyncio.gather(*(later(i / 100, one_stream(server.port, "/v1/chat/completions",
                                                         paced(headers, 10, 50), 10, STREAM_TIMEOUT_S))
                               for i in range(300)))
        stop.set()
        await shorts
    asyncio.run(run())
    time.sleep(3.0)


def held_run(server: Server, headers: dict[str, str]) -> HeldRun:
    """Run one round of the 1,000 streams and measure it."""
    idle = tree_rss_mib(server.proc.pid)
    results, shorts, peak = asyncio.run(_hold(server, headers))
    time.sleep(3.0)  # let the workers let go of what the streams held
    ttfbs = [r.ttfb_ms for r in results if r.ttfb_ms is not None]
    delays = [d for r in results for d in r.delays_ms]
    return HeldRun(errors=sum(r.error is not None for r in results), complete=sum(r.complete for r in results),
                   ttfb_p99=p99(ttfbs), delay_p99=p99(delays), short_p99=p99(shorts),
                   rss_idle=idle, rss_held=peak, rss_after=tree_rss_mib(server.proc.pid),
                   error_kinds=Counter((r.error or "").split(":")[0] for r in results if r.error))


def cpu_per_event_us(server: Server, headers: dict[str, str]) -> float:
    """Return the gunicorn tree's CPU microseconds per relayed event over CPU_STREAMS x CPU_EVENTS."""
    async def run() -> list[StreamResult]:
        return await asyncio.gather(*(one_stream(server.port, "/v1/chat/completions",
                                                 paced(headers, CPU_EVENTS, CPU_INTERVAL_MS), CPU_EVENTS, 120.0)
                                      for _ in range(CPU_STREAMS)))
    before = tree_cpu_seconds(server.proc.pid)
    results = asyncio.run(run())
    used = tree_cpu_seconds(server.proc.pid) - before
    relayed = sum(len(r.delays_ms) for r in results)
    return used / max(relayed, 1) * 1e6


def show(report: Report, label: str, values: list[float], unit: str, ok: Callable[[float], bool],
         target: str, digits: int = 0) -> bool:
    """Print one figure with its target and verdict (met only when every run meets it)."""
    met = all(ok(value) for value in values)
    report.say(f"  {label:<44} {spread(values, unit, digits):<26} target {target:<16} {verdict(met)}")
    return met


def capacity(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Run the capacity section and return its verdicts."""
    raise_open_files()
    runs = 1 if plan.quick else RUNS
    workers, threads = default_workers(), Settings.threads
    upstream = start_upstream(procs, workdir)
    portico = start_portico(procs, workdir, workers, threads, None, name="portico-capacity")
    report.section(f"Capacity ({workers} workers x {threads} threads, the defaults; unpinned; "
                   f"{runs} run(s), median (min-max))")
    try:
        verdicts = held(report, portico, upstream, runs)
        verdicts += head_of_line(report, portico, upstream, runs)
        floor = start_floor(procs, workdir, upstream, workers, threads, None)
        try:
            verdicts += cpu(report, floor, portico, upstream, runs)
        finally:
            procs.stop(floor.proc)
    finally:
        procs.stop(portico.proc)
    return verdicts


def held(report: Report, portico: Server, upstream: str, runs: int) -> list[bool]:
    """Report the 1,000-stream figures."""
    headers = provider_headers("openai", upstream)
    report.note(f"capacity: {STREAMS} streams x {runs}")
    warm_up(portico, headers)
    rounds = [held_run(portico, headers) for _ in range(runs)]
    report.say(f"{STREAMS} concurrent streams, {EVENTS} events {INTERVAL_MS} ms apart (OpenAI passthrough); "
               f"a short call every {SHORT_EVERY_S * 1000:.0f} ms meanwhile; a stream not done in "
               f"{STREAM_TIMEOUT_S:.0f} s is an error")
    kinds = sum((r.error_kinds for r in rounds), Counter[str]())
    if kinds:
        report.say("  errors by kind, all runs: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()))
    return [
        show(report, "errors", [r.errors for r in rounds], "", lambda v: v == 0, "0"),
        show(report, "complete streams", [r.complete for r in rounds], f"of {STREAMS}",
             lambda v: v == STREAMS, f"{STREAMS}"),
        show(report, "time to first byte p99", [r.ttfb_p99 for r in rounds], "ms",
             lambda v: v <= TTFB_MAX_MS, f"<= {TTFB_MAX_MS:.0f} ms"),
        show(report, "event delay p99 (upstream send -> client)", [r.delay_p99 for r in rounds], "ms",
             lambda v: v <= DELAY_MAX_MS, f"<= {DELAY_MAX_MS:.0f} ms"),
        show(report, "short call p99", [r.short_p99 for r in rounds], "ms",
             lambda v: v <= SHORT_MAX_MS, f"<= {SHORT_MAX_MS:.0f} ms"),
        show(report, "RSS, all gateway processes, holding", [r.rss_held for r in rounds], "MiB",
             lambda v: v <= RSS_MAX_MIB, f"<= {RSS_MAX_MIB:.0f} MiB"),
        show(report, "RSS after, over idle before", [(r.rss_after / r.rss_idle - 1) * 100 for r in rounds], "%",
             lambda v: v <= RSS_SETTLE * 100, f"<= {RSS_SETTLE * 100:.0f} %", 1),
    ]


def head_of_line(report: Report, portico: Server, upstream: str, runs: int) -> list[bool]:
    """Report the event delay of 100 streams beside a 10 MB request body and a 10 MB answer."""
    headers = provider_headers("openai", upstream)
    report.note(f"capacity: head of line x {runs}")
    rounds = [head_of_line_run(portico, headers) for _ in range(runs)]
    report.say(f"{HOL_STREAMS} streams beside 10 MB request bodies and 10 MB answers, back to back "
               f"(per run: {', '.join(f'{up} up, {down} down' for _, up, down in rounds)})")
    return [show(report, "event delay p99 beside the large transfers", [r[0] for r in rounds], "ms",
                 lambda v: v <= DELAY_MAX_MS, f"<= {DELAY_MAX_MS:.0f} ms")]


def cpu(report: Report, floor: Server, portico: Server, upstream: str, runs: int) -> list[bool]:
    """Report gateway CPU per relayed event: floor, passthrough, translated."""
    report.note(f"capacity: CPU per event x {runs}")
    sides = {"floor": (floor, {"Authorization": "Bearer x"}),
             "passthrough": (portico, provider_headers("openai", upstream)),
             "translated": (portico, provider_headers("anthropic", upstream))}
    taken: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(runs):  # interleaved, so drift on the machine touches every side alike
        for name, (server, headers) in sides.items():
            taken[name].append(cpu_per_event_us(server, headers))
    over = {name: [us - base for us, base in zip(taken[name], taken["floor"], strict=True)]
            for name in ("passthrough", "translated")}
    report.say(f"gateway CPU per relayed event ({CPU_STREAMS} streams x {CPU_EVENTS} events, "
               f"{CPU_INTERVAL_MS} ms apart; CPU time of master + workers)")
    report.say(f"  {'floor (Flask + requests, raw.read1)':<44} {spread(taken['floor'], 'us'):<26}")
    translated = f"{spread(taken['translated'], 'us')}"
    report.say(f"  {'translated (Anthropic -> OpenAI chunks)':<44} {translated:<26}")
    return [
        show(report, "passthrough", taken["passthrough"], "us", lambda v: v <= PASS_AIM_US,
             f"aim <= {PASS_AIM_US:.0f} us"),
        show(report, "passthrough over the floor", over["passthrough"], "us", lambda v: v <= PASS_OVER_US,
             f"<= +{PASS_OVER_US:.0f} us"),
        show(report, "translated over the floor", over["translated"], "us", lambda v: v <= TRANSLATED_OVER_US,
             f"<= +{TRANSLATED_OVER_US:.0f} us"),
    ]
