"""Three measured parts of the report: throughput and latency, streamed TTFB, worker RSS (configs: config_engine)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procfs, stream
from bench.loadgen import WrkResult, run_wrk, write_script
from bench.plan import Plan
from bench.procs import BenchError, Procs
from bench.report import Report, verdict
from bench.targets import Server, portico_headers, start_portico
from bench.upstreams import Upstream

TARGETS = ("direct", "floor", "portico")
RPS_RATIO_MIN = 0.85
ADDED_P50_RATIO_MAX = 1.2
TTFB_EXTRA_MAX_MS = 2.0
EVENT_DELAY_MAX_MS = 5.0
RSS_DRIFT_MAX_PCT = 5.0
BUSY_WARNING_PCT = 10.0


# --------------------------------------------------------------------------- throughput and latency


@dataclass
class Tally:
    """One target at one concurrency, summed over its measured rounds."""

    requests: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    round_cpu_us: list[float] = field(default_factory=list)
    bad: int = 0
    cpu_s: float = 0.0
    others_s: float | None = None

    def add(self, result: WrkResult, wall: float, cpu_s: float, others_s: float | None) -> None:
        """Add one measured round."""
        self.requests += result.requests
        self.seconds += result.seconds
        self.wall += wall
        self.p50s.append(result.p50_ms)
        self.p99s.append(result.p99_ms)
        self.round_rps.append(result.rps)
        self.round_cpu_us.append(cpu_s / result.requests * 1e6 if result.requests else 0.0)
        self.bad += result.errors + result.bad_status
        self.cpu_s += cpu_s
        if others_s is not None:
            self.others_s = (self.others_s or 0.0) + others_s

    @property
    def rps(self) -> float:
        """Return completed calls per second over all rounds."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        """Return the mean of the rounds' medians, ms."""
        return sum(self.p50s) / len(self.p50s)

    @property
    def p99(self) -> float:
        """Return the mean of the rounds' 99th percentiles, ms."""
        return sum(self.p99s) / len(self.p99s)

    @property
    def cpu_us(self) -> float:
        """Return the target's CPU time per completed call, µs."""
        return self.cpu_s / self.requests * 1e6 if self.requests else 0.0

    def others_pct(self, cores: int) -> float | None:
        """Return the share of the target's cores used by processes outside the benchmark, %."""
        if self.others_s is None or not self.wall or not cores:
            return None
        return self.others_s / self.wall / cores * 100


@dataclass(frozen=True)
class LoadTarget:
    """A target of the wrk runs: its base URL, wrk script, the pid of its process tree and the path called."""

    url: str
    script: Path
    pid: int
    on_server_cores: bool
    path: str = "/v1/rerank"


Round = tuple[WrkResult, float, float, float | None]


def measured_round(target: LoadTarget, connections: int, plan: Plan, seconds: float | None = None,
                   warmup: bool = True) -> Round:
    """Warm up (unless told not to), then run wrk once; return the result, wall time, target CPU, others' CPU."""
    url = target.url + target.path
    if warmup:
        run_wrk(url, target.script, connections, plan.warmup, plan.wrk_threads, plan.load_cpus)
    cores = plan.server_cores if target.on_server_cores else []
    cpu_before = procfs.tree_cpu_seconds(target.pid)
    busy_before = procfs.cores_busy_seconds(cores)
    started = time.monotonic()
    result = run_wrk(url, target.script, connections, seconds or plan.round_seconds, plan.wrk_threads,
                     plan.load_cpus)
    wall = time.monotonic() - started
    cpu = procfs.tree_cpu_seconds(target.pid) - cpu_before
    others = max(0.0, procfs.cores_busy_seconds(cores) - busy_before - cpu) if cores else None
    return result, wall, cpu, others


def throughput(report: Report, plan: Plan, targets: dict[str, LoadTarget]) -> dict[tuple[str, int], Tally]:
    """Measure every target at every concurrency, round-robin so background load hits all alike."""
    report.section("Throughput and latency (wrk)")
    report.say("cpu/call: CPU time of the target's processes per call (gunicorn master + workers, or nginx); "
               "others: share of the gunicorn core used by processes outside the benchmark")
    report.say(table_header("target"))
    tallies: dict[tuple[str, int], Tally] = {}
    for connections in plan.concurrencies:
        for name in TARGETS:
            tallies[name, connections] = Tally()
        for _ in range(plan.rounds):
            for name in TARGETS:
                tallies[name, connections].add(*measured_round(targets[name], connections, plan))
        for name in TARGETS:
            report.say(table_row(name, connections, tally=tallies[name, connections], cores=len(plan.server_cores)))
    return tallies


def table_header(label: str, width: int = 9) -> str:
    """Return the header line of a wrk results table whose first column is `width` wide."""
    return (f"{label:<{width}}{'conc':>5}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'calls':>9}{'cpu/call':>10}"
            f"{'others':>8}  errors")


def table_row(name: str, connections: int, *, tally: Tally, cores: int, width: int = 9) -> str:
    """Return one line of a wrk results table."""
    others = tally.others_pct(cores)
    shown = f"{others:.0f}%" if others is not None else "-"
    cpu = f"{tally.cpu_us:.0f} us" if tally.cpu_us >= 10 else f"{tally.cpu_us:.1f} us"
    return (f"{name:<{width}}{connections:>5}{tally.rps:>9.0f}{tally.p50:>9.2f}{tally.p99:>9.2f}{tally.requests:>9}"
            f"{cpu:>10}{shown:>8}  {tally.bad or '-'}")


def throughput_verdicts(report: Report, plan: Plan, tallies: dict[tuple[str, int], Tally]) -> list[bool]:
    """Print the two ratios against their targets (and what CPU per call says); return whether each passed."""
    report.say()
    floor, portico = tallies["floor", 16], tallies["portico", 16]
    rps_ratio = portico.rps / floor.rps if floor.rps else 0.0
    rps_ok = rps_ratio >= RPS_RATIO_MIN
    report.say(f"portico/floor rps at c=16: {portico.rps:.0f}/{floor.rps:.0f} = {rps_ratio:.2f} "
               f"(target >= {RPS_RATIO_MIN})  {verdict(rps_ok)}")
    if portico.cpu_us:
        report.say(f"  same from CPU per call at c=16: floor {floor.cpu_us:.0f} us / portico {portico.cpu_us:.0f} us "
                   f"= {floor.cpu_us / portico.cpu_us:.2f} (capacity ratio on a saturated core)")
    direct = tallies["direct", 1].p50
    added_portico, added_floor = tallies["portico", 1].p50 - direct, tallies["floor", 1].p50 - direct
    ratio = added_portico / added_floor if added_floor > 0 else float("inf")
    p50_ok = ratio <= ADDED_P50_RATIO_MAX
    report.say(f"added p50 at c=1: portico +{added_portico:.3f} ms, floor +{added_floor:.3f} ms, "
               f"ratio {ratio:.2f} (target <= {ADDED_P50_RATIO_MAX})  {verdict(p50_ok)}")
    warn_noise(report, plan, tallies.values())
    return [rps_ok, p50_ok]


def warn_noise(report: Report, plan: Plan, tallies: Iterable[Tally]) -> None:
    """Say so when errors happened or other processes took a real share of the gunicorn core."""
    tallies = list(tallies)
    errors = sum(t.bad for t in tallies)
    if errors:
        report.say(f"WARNING: {errors} socket errors or unexpected 4xx/5xx answers during the runs (see the table)")
    busiest = max((t.others_pct(len(plan.server_cores)) or 0.0 for t in tallies), default=0.0)
    if busiest >= BUSY_WARNING_PCT:
        report.say(f"WARNING: processes outside the benchmark used up to {busiest:.0f}% of the gunicorn core "
                   "during a run; rps and latency figures are disturbed (CPU per call much less so)")


# --------------------------------------------------------------------------- streamed TTFB


def streaming(report: Report, plan: Plan, fake: Upstream, floor: Server, portico: Server) -> list[bool]:
    """Compare streamed TTFB and event arrival direct vs through the floor vs through Portico's proxy path."""
    report.section("Streamed time to first byte (http.client, sequential, new connection per call)")
    report.say(f"{plan.stream_calls} calls per target, round-robin; POST chat/completions stream=true, "
               f"{stream.EVENTS} events + finish + [DONE], {stream.INTERVAL_MS} ms apart, from the fake provider")
    report.say("direct: /v1/chat/completions on the fake provider; floor: the same through bench/floor_app.py; "
               "portico: /v1/proxy/chat/completions")
    sides = stream.compare(_stream_routes(fake, floor, portico, stream.INTERVAL_MS), plan.stream_calls)
    ttfb = {name: stream.median_ttfb(side) for name, side in sides.items()}
    extra = ttfb["portico"] - ttfb["direct"]
    ttfb_ok = extra <= TTFB_EXTRA_MAX_MS
    report.say(f"median TTFB: direct {ttfb['direct']:.2f} ms, floor {ttfb['floor']:.2f} ms "
               f"({ttfb['floor'] - ttfb['direct']:+.2f}), portico {ttfb['portico']:.2f} ms ({extra:+.2f}); "
               f"portico - direct target <= +{TTFB_EXTRA_MAX_MS:.0f} ms  {verdict(ttfb_ok)}")
    events_ok = _event_table(report, sides)
    _back_to_back(report, plan, fake, floor, portico)
    return [ttfb_ok, events_ok]


def _stream_routes(fake: Upstream, floor: Server, portico: Server, interval_ms: int) -> dict[str, stream.Route]:
    pace = {"x-fake-event-interval-ms": str(interval_ms)}
    return {"direct": stream.Route(fake.port, "/v1/chat/completions", stream.stream_headers(pace)),
            "floor": stream.Route(floor.port, "/v1/chat/completions", stream.stream_headers(pace)),
            "portico": stream.Route(portico.port, "/v1/proxy/chat/completions",
                                    stream.stream_headers({**portico_headers(fake.url), **pace}))}


def _event_table(report: Report, sides: dict[str, list[stream.StreamTiming]]) -> bool:
    """Print each event's median arrival per target; return whether Portico held none back."""
    report.say("median arrival of each event after the request was sent, ms (gap = time since the event before):")
    report.say(f"{'event':>7}{'direct':>9}{'floor':>9}{'portico':>9}{'delta':>8}{'gap direct':>12}"
               f"{'gap portico':>13}")
    worst = 0.0
    for index in range(stream.event_count(sides)):
        at = {name: stream.median_event(side, index) for name, side in sides.items()}
        worst = max(worst, at["portico"] - at["direct"])
        gaps = ("", "") if index == 0 else (f"{stream.median_gap(sides['direct'], index):.2f}",
                                            f"{stream.median_gap(sides['portico'], index):.2f}")
        report.say(f"{index + 1:>7}{at['direct']:>9.2f}{at['floor']:>9.2f}{at['portico']:>9.2f}"
                   f"{at['portico'] - at['direct']:>+8.2f}{gaps[0]:>12}{gaps[1]:>13}")
    held = stream.bunched(sides["portico"])
    ok = worst <= EVENT_DELAY_MAX_MS and held == 0
    report.say(f"events held back by portico: worst median delay {worst:+.2f} ms "
               f"(target <= +{EVENT_DELAY_MAX_MS:.0f} ms), calls with bunched events "
               f"{held}/{len(sides['portico'])}  {verdict(ok)}")
    return ok


def _back_to_back(report: Report, plan: Plan, fake: Upstream, floor: Server, portico: Server) -> None:
    """For context: the same calls with no pause between events, so the CPUs never go idle mid-call."""
    sides = stream.compare(_stream_routes(fake, floor, portico, 0), plan.stream_calls)
    ttfb = {name: stream.median_ttfb(side) for name, side in sides.items()}
    report.say(f"for context, without the {stream.INTERVAL_MS} ms pauses (no idle CPU between calls): median TTFB "
               f"direct {ttfb['direct']:.2f} ms, floor {ttfb['floor']:.2f} ms "
               f"({ttfb['floor'] - ttfb['direct']:+.2f}), portico {ttfb['portico']:.2f} ms "
               f"({ttfb['portico'] - ttfb['direct']:+.2f})")


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
    worker = procfs.only_worker(server.proc.pid)
    script = write_script(workdir / "rss.lua", portico_headers(upstream.url))
    url = server.url + "/v1/rerank"
    warm = run_wrk(url, script, plan.rss_connections, plan.warmup, plan.wrk_threads, plan.load_cpus)
    report.say(f"after warm-up ({warm.requests:,} calls): {procfs.rss_kib(worker) / 1024:.1f} MiB")
    done, rps, errors = warm.requests, warm.rps, warm.errors + warm.bad_status
    marks = []
    for step in (first, second):
        count, rps, step_errors = drive(url, script, step - done, plan, rps)
        done, errors = done + count, errors + step_errors
        if procfs.only_worker(server.proc.pid) != worker:
            raise BenchError("the gunicorn worker was replaced during the RSS run")
        marks.append(procfs.rss_kib(worker))
        report.say(f"after {done:,} calls: {marks[-1] / 1024:.1f} MiB   (last round {rps:.0f} rps)")
    change = (marks[1] - marks[0]) / marks[0] * 100
    ok = abs(change) <= RSS_DRIFT_MAX_PCT and errors == 0
    report.say(f"change between the marks: {change:+.2f} % (target within +/-{RSS_DRIFT_MAX_PCT:.0f} %)"
               + (f", {errors} errors" if errors else "") + f"  {verdict(ok)}")
    procs.stop(server.proc)
    return [ok]
