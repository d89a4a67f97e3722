"""Portico's load benchmark: direct vs the Flask floor vs Portico, streamed TTFB, and worker RSS over 100k calls.

    .venv/bin/python -m bench.run            # the full run, about 5 minutes
    .venv/bin/python -m bench.run --quick    # a short smoke run, about 1 minute

Everything listens on 127.0.0.1 only; every process started here is stopped on the way out.
The report is printed and saved to bench/results/latest.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import memory, stream
from bench.loadgen import RERANK_BODY, WrkResult, run_wrk, write_script
from bench.procs import BenchError, Procs, ensure_tool
from bench.report import Report, verdict
from bench.targets import Server, portico_headers, start_floor, start_portico
from bench.upstreams import Upstream, start_fake, start_nginx

RESULTS = Path(__file__).resolve().parent / "results" / "latest.txt"
TARGETS = ("direct", "floor", "portico")
RPS_RATIO_MIN = 0.85
ADDED_P50_RATIO_MAX = 1.2
TTFB_EXTRA_MAX_MS = 2.0
EVENT_DELAY_MAX_MS = 5.0
RSS_DRIFT_MAX_PCT = 5.0


@dataclass(frozen=True)
class Plan:
    """What one run does: durations, concurrencies, counts, gunicorn sizing and CPU placement."""

    quick: bool
    duration: float
    warmup: float
    concurrencies: tuple[int, ...]
    stream_calls: int
    rss_steps: tuple[int, int]
    rss_connections: int
    workers: int
    threads: int
    server_cpus: str | None
    load_cpus: str | None

    @property
    def wrk_threads(self) -> int:
        """Return wrk's thread count: one when wrk shares a single pinned core with the upstream."""
        return 1 if self.load_cpus and "," not in self.load_cpus and "-" not in self.load_cpus else 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--duration", type=float, help="seconds per measured wrk run (default 10, quick 3)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", "2")),
                        help="gunicorn workers for floor and Portico (default GATEWAY_WORKERS or 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GATEWAY_THREADS", "16")),
                        help="threads per worker for floor and Portico (default GATEWAY_THREADS or 16)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin gunicorn and the load generator + upstream to separate cores")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"where to save the report ({RESULTS})")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """Turn the arguments into a Plan."""
    server_cpus, load_cpus = (None, None) if args.no_pin else split_cpus()
    return Plan(quick=args.quick, duration=args.duration or (3.0 if args.quick else 10.0),
                warmup=1.0 if args.quick else 2.0, concurrencies=(1, 16, 64),
                stream_calls=10 if args.quick else 50,
                rss_steps=(10_000, 20_000) if args.quick else (50_000, 100_000), rss_connections=16,
                workers=args.workers, threads=args.threads, server_cpus=server_cpus, load_cpus=load_cpus)


def split_cpus() -> tuple[str | None, str | None]:
    """Return (gunicorn cpus, wrk + upstream cpus): the last usable core for the load, the rest for gunicorn."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return ",".join(map(str, cpus[:-1])), str(cpus[-1])


# --------------------------------------------------------------------------- header


def describe(report: Report, plan: Plan, upstream: Upstream) -> None:
    """Print what was measured, where and how."""
    report.say(f"Portico load benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
               + ("  (--quick)" if plan.quick else ""))
    report.say(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
               f"load average at start {_loadavg()}")
    report.say(f"upstream: {upstream.label}")
    report.say(f"gunicorn (floor and portico): gthread, {plan.workers} workers x {plan.threads} threads, "
               "keep-alive 75 s")
    if plan.server_cpus:
        report.say(f"pinning: gunicorn on CPU {plan.server_cpus}; wrk and the upstreams on CPU {plan.load_cpus}")
    else:
        report.say("pinning: none (everything shares every core)")
    report.say(f"wrk: {_wrk_version()}, {plan.wrk_threads} thread(s), {plan.warmup:.0f} s warm-up then "
               f"{plan.duration:.0f} s per run; POST /v1/rerank with a {len(RERANK_BODY)}-byte JSON body")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).split(" [")[0].strip() or "wrk"


# --------------------------------------------------------------------------- throughput


def measure(url: str, script: Path, connections: int, plan: Plan) -> WrkResult:
    """Warm up, then run wrk for the measured duration."""
    run_wrk(url, script, connections, plan.warmup, plan.wrk_threads, plan.load_cpus)
    return run_wrk(url, script, connections, plan.duration, plan.wrk_threads, plan.load_cpus)


def throughput(report: Report, plan: Plan, urls: dict[str, str],
               scripts: dict[str, Path]) -> dict[tuple[str, int], WrkResult]:
    """Measure every target at every concurrency, concurrency by concurrency so drift hits all alike."""
    report.section("Throughput and latency (wrk)")
    report.say(f"{'target':<9}{'conc':>5}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}  errors")
    results: dict[tuple[str, int], WrkResult] = {}
    for connections in plan.concurrencies:
        for target in TARGETS:
            result = measure(urls[target] + "/v1/rerank", scripts[target], connections, plan)
            results[target, connections] = result
            bad = result.errors + result.bad_status
            report.say(f"{target:<9}{connections:>5}{result.rps:>10.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
                       f"{result.requests:>10}  {bad if bad else '-'}")
    return results


def throughput_verdicts(report: Report, results: dict[tuple[str, int], WrkResult]) -> list[bool]:
    """Print the two ratios against their targets and return whether each passed."""
    report.say()
    floor, portico = results["floor", 16], results["portico", 16]
    rps_ratio = portico.rps / floor.rps if floor.rps else 0.0
    rps_ok = rps_ratio >= RPS_RATIO_MIN
    report.say(f"portico/floor rps at c=16: {portico.rps:.0f}/{floor.rps:.0f} = {rps_ratio:.2f} "
               f"(target >= {RPS_RATIO_MIN})  {verdict(rps_ok)}")
    direct = results["direct", 1].p50_ms
    added_portico = results["portico", 1].p50_ms - direct
    added_floor = results["floor", 1].p50_ms - direct
    ratio = added_portico / added_floor if added_floor > 0 else float("inf")
    p50_ok = ratio <= ADDED_P50_RATIO_MAX
    report.say(f"added p50 at c=1: portico +{added_portico:.3f} ms, floor +{added_floor:.3f} ms, "
               f"ratio {ratio:.2f} (target <= {ADDED_P50_RATIO_MAX})  {verdict(p50_ok)}")
    errors = sum(r.errors + r.bad_status for r in results.values())
    if errors:
        report.say(f"WARNING: {errors} socket errors or 4xx/5xx answers during the runs (see the table)")
    return [rps_ok, p50_ok]


# --------------------------------------------------------------------------- streaming


def streaming(report: Report, plan: Plan, fake: Upstream, floor: Server, portico: Server) -> list[bool]:
    """Compare streamed TTFB and event arrival direct vs through the floor vs through Portico's proxy path."""
    report.section("Streamed time to first byte (http.client, sequential, new connection per call)")
    report.say(f"{plan.stream_calls} calls per target, round-robin; POST chat/completions stream=true, "
               f"{stream.EVENTS} events + finish + [DONE], {stream.INTERVAL_MS} ms apart, from the fake provider")
    report.say("direct: /v1/chat/completions on the fake provider; floor: the same through bench/floor_app.py; "
               "portico: /v1/proxy/chat/completions")
    routes = {"direct": stream.Route(fake.port, "/v1/chat/completions", stream.stream_headers()),
              "floor": stream.Route(floor.port, "/v1/chat/completions", stream.stream_headers()),
              "portico": stream.Route(portico.port, "/v1/proxy/chat/completions",
                                      stream.stream_headers(portico_headers(fake.url)))}
    sides = stream.compare(routes, plan.stream_calls)
    ttfb = {name: stream.median_ttfb(side) for name, side in sides.items()}
    extra = ttfb["portico"] - ttfb["direct"]
    ttfb_ok = extra <= TTFB_EXTRA_MAX_MS
    report.say(f"median TTFB: direct {ttfb['direct']:.2f} ms, floor {ttfb['floor']:.2f} ms "
               f"({ttfb['floor'] - ttfb['direct']:+.2f}), portico {ttfb['portico']:.2f} ms ({extra:+.2f}); "
               f"portico - direct target <= +{TTFB_EXTRA_MAX_MS:.0f} ms  {verdict(ttfb_ok)}")
    report.say("median arrival of each event after the request was sent, ms (gap = time since the event before):")
    report.say(f"{'event':>7}{'direct':>9}{'floor':>9}{'portico':>9}{'delta':>8}{'gap direct':>12}{'gap portico':>13}")
    worst = 0.0
    for index in range(stream.event_count(sides)):
        at = {name: stream.median_event(side, index) for name, side in sides.items()}
        worst = max(worst, at["portico"] - at["direct"])
        gaps = ("", "") if index == 0 else (f"{stream.median_gap(sides['direct'], index):.2f}",
                                            f"{stream.median_gap(sides['portico'], index):.2f}")
        report.say(f"{index + 1:>7}{at['direct']:>9.2f}{at['floor']:>9.2f}{at['portico']:>9.2f}"
                   f"{at['portico'] - at['direct']:>+8.2f}{gaps[0]:>12}{gaps[1]:>13}")
    held = stream.bunched(sides["portico"])
    events_ok = worst <= EVENT_DELAY_MAX_MS and held == 0
    report.say(f"events held back by portico: worst median delay {worst:+.2f} ms "
               f"(target <= +{EVENT_DELAY_MAX_MS:.0f} ms), calls with bunched events "
               f"{held}/{len(sides['portico'])}  {verdict(events_ok)}")
    return [ttfb_ok, events_ok]


# --------------------------------------------------------------------------- worker RSS


def drive(url: str, script: Path, total: int, plan: Plan, rps_guess: float) -> tuple[int, float, int]:
    """Run wrk in timed rounds until at least `total` calls completed; return (calls, last rps, errors)."""
    done, rps, errors = 0, rps_guess, 0
    while done < total:
        seconds = max(1, min(30, int((total - done) / max(rps, 1.0))))
        result = run_wrk(url, script, plan.rss_connections, seconds, plan.wrk_threads, plan.load_cpus)
        if result.requests == 0:
            raise BenchError("wrk completed no calls while driving the RSS run")
        done += result.requests
        rps = result.rps
        errors += result.errors + result.bad_status
    return done, rps, errors


def worker_rss(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream) -> list[bool]:
    """Drive a one-worker Portico through the RSS steps and compare the worker's RSS at the two marks."""
    first, second = plan.rss_steps
    report.section(f"Worker RSS over {second:,} calls (1 worker x {plan.threads} threads, "
                   f"wrk -c{plan.rss_connections}, POST /v1/rerank to the same upstream)")
    server = start_portico(procs, workdir, 1, plan.threads, plan.server_cpus, name="portico-rss")
    worker = memory.only_worker(server.proc.pid)
    script = write_script(workdir / "rss.lua", portico_headers(upstream.url))
    url = server.url + "/v1/rerank"
    warm = run_wrk(url, script, plan.rss_connections, plan.warmup, plan.wrk_threads, plan.load_cpus)
    report.say(f"after warm-up ({warm.requests:,} calls): {memory.rss_kib(worker) / 1024:.1f} MiB")
    done, rps, errors = warm.requests, warm.rps, warm.errors + warm.bad_status
    marks = []
    for step in (first, second):
        count, rps, step_errors = drive(url, script, step - done, plan, rps)
        done, errors = done + count, errors + step_errors
        if memory.only_worker(server.proc.pid) != worker:
            raise BenchError("the gunicorn worker was replaced during the RSS run")
        marks.append(memory.rss_kib(worker))
        report.say(f"after {done:,} calls: {marks[-1] / 1024:.1f} MiB   (last round {rps:.0f} rps)")
    change = (marks[1] - marks[0]) / marks[0] * 100
    ok = abs(change) <= RSS_DRIFT_MAX_PCT and errors == 0
    report.say(f"change between the marks: {change:+.2f} % (target within +/-{RSS_DRIFT_MAX_PCT:.0f} %)"
               + (f", {errors} errors" if errors else "") + f"  {verdict(ok)}")
    procs.stop(server.proc)
    return [ok]


# --------------------------------------------------------------------------- main


def run(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Run the three parts in order and return every verdict."""
    if ensure_tool("wrk", "wrk") is None:
        raise BenchError("wrk is needed: apt-get install wrk")
    report.note("starting the upstream")
    upstream = start_nginx(procs, workdir, plan.load_cpus)
    if upstream is None:
        upstream = start_fake(procs, workdir, plan.load_cpus, name="upstream-fake")
        upstream.label += "; nginx could not be installed, so the upstream may be the bottleneck"
    describe(report, plan, upstream)
    report.note("starting the floor and Portico")
    floor = start_floor(procs, workdir, upstream.url, plan.workers, plan.threads, plan.server_cpus)
    portico = start_portico(procs, workdir, plan.workers, plan.threads, plan.server_cpus)
    direct_headers = {"Authorization": "Bearer x"}
    scripts = {"direct": write_script(workdir / "direct.lua", direct_headers),
               "floor": write_script(workdir / "floor.lua", direct_headers),
               "portico": write_script(workdir / "portico.lua", portico_headers(upstream.url))}
    urls = {"direct": upstream.url, "floor": floor.url, "portico": portico.url}
    verdicts = throughput_verdicts(report, throughput(report, plan, urls, scripts))
    procs.stop(floor.proc)
    report.note("streaming")
    fake = start_fake(procs, workdir, plan.load_cpus)
    stream_floor = start_floor(procs, workdir, fake.url, plan.workers, plan.threads, plan.server_cpus)
    verdicts += streaming(report, plan, fake, stream_floor, portico)
    for proc in (stream_floor.proc, portico.proc, fake.proc):
        procs.stop(proc)
    report.note("worker RSS")
    verdicts += worker_rss(report, plan, procs, workdir, upstream)
    return verdicts


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print and save the report; exit 1 on failure (or, with --strict, on a missed target)."""
    args = parse_args(argv)
    plan = make_plan(args)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    report = Report()
    started = time.monotonic()
    code = 1
    try:
        with tempfile.TemporaryDirectory(prefix="portico-bench-") as tmp, Procs() as procs:
            verdicts = run(report, plan, procs, Path(tmp))
            code = 1 if args.strict and not all(verdicts) else 0
            report.say()
            report.say(f"targets met: {sum(verdicts)}/{len(verdicts)}; load average at end {_loadavg()}; "
                       f"took {time.monotonic() - started:.0f} s")
    except KeyboardInterrupt:
        report.say("\ninterrupted: every process started by the benchmark was stopped")
        code = 130
    except BenchError as err:
        report.say(f"\nbenchmark failed: {err}")
    finally:
        report.save(args.output)
        print(f"(saved to {args.output})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
