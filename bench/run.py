"""Portico's load benchmark: direct vs floor vs Portico, config engine, cache, guardrails, observability, TTFB, RSS.

    .venv/bin/python -m bench.run                 # the full run, about 15 minutes (capacity: 7)
    .venv/bin/python -m bench.run --quick         # a short smoke run, about five minutes (capacity: 3)
    .venv/bin/python -m bench.run --only config   # one section (repeatable): throughput, config, cache,
                                                  # translation, observability, governance, streaming, rss,
                                                  # hardening, capacity

Everything listens on 127.0.0.1 only; every process started here is stopped on the way out.
The report is printed and saved to bench/results/latest.txt. See bench/README.md.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import sections, translation
from bench.cache_guardrails import cache_guardrails
from bench.capacity import capacity
from bench.config_engine import config_engine
from bench.governance import governance
from bench.hardening import hardening
from bench.loadgen import RERANK_BODY, write_script
from bench.observability import observability
from bench.plan import SECTIONS, Plan, make_plan, parse_args
from bench.procs import BenchError, Procs, ensure_tool
from bench.report import Report
from bench.sections import LoadTarget
from bench.targets import Server, portico_headers, start_floor, start_portico
from bench.upstreams import Upstream, start_fake, start_nginx


def describe(report: Report, plan: Plan, upstream: Upstream) -> None:
    """Print what was measured, where and how."""
    quick = "  (--quick)" if plan.quick else ""
    only = "" if plan.sections == SECTIONS else f"  (--only {', '.join(plan.sections)})"
    report.say(f"Portico load benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}{quick}{only}")
    report.say(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
               f"load average at start {loadavg()}")
    report.say(f"upstream: {upstream.label}")
    report.say(f"gunicorn (floor and portico): gthread, {plan.workers} workers x {plan.threads} threads, "
               "keep-alive 75 s")
    if plan.server_cpus:
        report.say(f"pinning: gunicorn on CPU {plan.server_cpus}; wrk and nginx on CPU {plan.load_cpus} "
                   "(throughput, config engine, cache, observability, governance and RSS; the one-at-a-time streamed "
                   "calls run unpinned)")
    else:
        report.say("pinning: none (everything shares every core)")
    rounds = f"{plan.rounds} x {plan.round_seconds:.0f} s" if plan.rounds > 1 else f"{plan.duration:.0f} s"
    measured = (f"; throughput: per target and concurrency {rounds} measured, each after a {plan.warmup:.0f} s "
                "warm-up" if plan.runs("throughput") else "")
    report.say(f"wrk: {wrk_version()}, {plan.wrk_threads} thread(s){measured}; "
               f"POST /v1/rerank with a {len(RERANK_BODY)}-byte JSON body")


def loadavg() -> str:
    """Return the 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wrk_version() -> str:
    """Return wrk's version line, shortened."""
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).split(" [")[0].strip() or "wrk"


def start_upstream(procs: Procs, plan: Plan, workdir: Path) -> Upstream:
    """Start nginx as the throughput upstream, or the fake provider when nginx cannot be had."""
    upstream = start_nginx(procs, workdir, plan.load_cpus)
    if upstream is None:
        upstream = start_fake(procs, workdir, plan.load_cpus, name="upstream-fake")
        upstream.label += " -- nginx could not be installed; this upstream may be the bottleneck"
    return upstream


def run(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Run the chosen parts in order and return every verdict."""
    if ensure_tool("wrk", "wrk") is None:
        raise BenchError("wrk is needed: apt-get install wrk")
    report.note("starting the upstream")
    upstream = start_upstream(procs, plan, workdir)
    describe(report, plan, upstream)
    verdicts: list[bool] = []
    if any(plan.runs(name) for name in ("throughput", "config", "cache", "translation")):
        verdicts += pinned_load(report, plan, procs, workdir, upstream)
    if plan.runs("observability"):
        report.note("observability")
        verdicts += observability(report, plan, procs, workdir, upstream)
    if plan.runs("governance"):
        report.note("governance")
        verdicts += governance(report, plan, procs, workdir, upstream)
    if plan.runs("streaming"):
        report.note("streaming")
        verdicts += streamed(report, plan, procs, workdir)
    if plan.runs("rss"):
        report.note("worker RSS")
        verdicts += sections.worker_rss(report, plan, procs, workdir, upstream)
    if plan.runs("hardening"):
        report.note("hardening")
        verdicts += hardening(report, plan, procs, workdir)
    if plan.runs("capacity"):
        report.note("capacity")
        verdicts += capacity(report, plan, procs, workdir)
    return verdicts


def pinned_load(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream) -> list[bool]:
    """Start Portico pinned (and the floor, for throughput); run throughput, config engine, cache on them."""
    report.note("starting Portico" + (" and the floor" if plan.runs("throughput") else ""))
    portico = start_portico(procs, workdir, plan.workers, plan.threads, plan.server_cpus)
    verdicts: list[bool] = []
    if plan.runs("throughput"):
        verdicts += compare_throughput(report, plan, procs, workdir, upstream, portico)
    if plan.runs("config"):
        report.note("config engine")
        verdicts += config_engine(report, plan, workdir, portico, upstream)
    if plan.runs("cache"):
        report.note("cache and guardrails")
        verdicts += cache_guardrails(report, plan, workdir, portico, upstream)
    if plan.runs("translation"):
        report.note("translation")
        verdicts += translation.translation_cost(report, plan, workdir, portico, upstream)
        verdicts += translated_stream(report, plan, procs, workdir)
    procs.stop(portico.proc)
    return verdicts


def compare_throughput(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream,
                       portico: Server) -> list[bool]:
    """Start the floor and compare direct, floor and Portico under wrk."""
    floor = start_floor(procs, workdir, upstream.url, plan.workers, plan.threads, plan.server_cpus)
    plain = {"Authorization": "Bearer x"}
    targets = {
        "direct": LoadTarget(upstream.url, write_script(workdir / "direct.lua", plain), upstream.proc.pid, False),
        "floor": LoadTarget(floor.url, write_script(workdir / "floor.lua", plain), floor.proc.pid, True),
        "portico": LoadTarget(portico.url, write_script(workdir / "portico.lua", portico_headers(upstream.url)),
                              portico.proc.pid, True),
    }
    verdicts = sections.throughput_verdicts(report, plan, sections.throughput(report, plan, targets))
    procs.stop(floor.proc)
    return verdicts


def streamed(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Start the fake provider, a floor on it and Portico, unpinned, and compare streamed calls through them."""
    # One call at a time leaves nothing to contend for; pinning would only force cross-core wake-ups.
    fake = start_fake(procs, workdir, None)
    floor = start_floor(procs, workdir, fake.url, plan.workers, plan.threads, None)
    portico = start_portico(procs, workdir, plan.workers, plan.threads, None, name="portico-stream")
    try:
        return sections.streaming(report, plan, fake, floor, portico)
    finally:
        for proc in (portico.proc, floor.proc, fake.proc):
            procs.stop(proc)


def translated_stream(report: Report, plan: Plan, procs: Procs, workdir: Path) -> list[bool]:
    """Start the fake provider and an unpinned Portico on it; time translated stream events."""
    fake = start_fake(procs, workdir, None, name="fake-translation")
    portico = start_portico(procs, workdir, plan.workers, plan.threads, None, name="portico-translation")
    try:
        return translation.stream_delay(report, plan, fake, portico)
    finally:
        for proc in (portico.proc, fake.proc):
            procs.stop(proc)


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
            report.say(f"targets met: {sum(verdicts)}/{len(verdicts)}; load average at end {loadavg()}; "
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
