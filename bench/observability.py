"""The observability section: what the request log, access lines and metrics cost on the proxy path at c=16."""

from __future__ import annotations

import http.client
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.cache_guardrails import round_ratios
from bench.config_engine import Variant, checked, print_table
from bench.loadgen import RERANK_BODY, run_wrk
from bench.plan import Plan
from bench.procs import LOOPBACK, Procs
from bench.profile import profile_worker
from bench.report import Report, verdict
from bench.sections import LoadTarget, Tally, measured_round, warn_noise
from bench.targets import Server, portico_headers, start_portico
from bench.upstreams import Upstream

COST_MAX_PCT = 10.0
CONNECTIONS = 16
ON, OFF = "on", "off"
OFF_TOML = '[logs]\npath = ""\naccess_log = false\n\n[metrics]\nenabled = false\n'
REQUESTS_METRIC = "portico_requests_total"
ROW_WAIT_S = 3.0  # the log writer commits every 0.2 s: how long the first row may take to show
SETTLE_S = 0.5  # after the last wrk run, for the calls it left in flight to finish before /metrics is read


@dataclass
class Pair:
    """The two gateways: observability on (the defaults) and all off, on the same pinned cores."""

    on: Server
    off: Server
    workdir: Path

    @property
    def log_path(self) -> Path:
        """Return the request-log file of the 'on' gateway."""
        return self.workdir / "on.sqlite"

    def access_lines(self, server: Server) -> int:
        """Return how many access lines a gateway has written to its stdout file so far."""
        with (self.workdir / f"{server.name}.access.log").open("rb") as lines:
            return sum(1 for _ in lines)


def on_toml(workdir: Path) -> str:
    """Return the 'on' observability tables: the request log in workdir; access lines and metrics as by default."""
    return f'[logs]\npath = "{workdir / "on.sqlite"}"\n'


def start_pair(procs: Procs, plan: Plan, workdir: Path) -> Pair:
    """Start both gateways with the throughput section's workers, threads and pinning."""
    on = start_portico(procs, workdir, plan.workers, plan.threads, plan.server_cpus, name="portico-on",
                       observe=on_toml(workdir))
    off = start_portico(procs, workdir, plan.workers, plan.threads, plan.server_cpus, name="portico-off",
                        observe=OFF_TOML)
    return Pair(on, off, workdir)


def variants(pair: Pair, upstream: Upstream) -> list[Variant]:
    """Return the same proxy call (provider openai, custom host to the upstream) through each gateway."""
    headers = portico_headers(upstream.url)
    return [Variant(name, server.port, server.proc.pid, headers)
            for name, server in ((ON, pair.on), (OFF, pair.off))]


# --------------------------------------------------------------------------- checks before timing


def get(server: Server, path: str) -> tuple[int, str]:
    """Make one GET with http.client; return status and body text."""
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def requests_total(text: str) -> float:
    """Return the sum of portico_requests_total over its labels in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(REQUESTS_METRIC + "{") or line.startswith(REQUESTS_METRIC + " "))


def log_rows(path: Path) -> int:
    """Return how many rows the request log holds (0 when it has no table yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def first_row(path: Path) -> int:
    """Wait up to ROW_WAIT_S for the sample call's row to be committed; return the row count."""
    deadline = time.monotonic() + ROW_WAIT_S
    rows = log_rows(path)
    while rows == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = log_rows(path)
    return rows


def recording_problems(pair: Pair) -> list[str]:
    """Return what is wrong with 'on' recording the sample call, or 'off' not recording it (empty: all good)."""
    problems = []
    rows = first_row(pair.log_path)
    time.sleep(0.6)  # access lines are flushed every 0.25 s
    lines_on, lines_off = pair.access_lines(pair.on), pair.access_lines(pair.off)
    status_on, text_on = get(pair.on, "/metrics")
    status_off, _ = get(pair.off, "/metrics")
    if rows != 1:
        problems.append(f"on: {rows} rows in {pair.log_path.name} after one call, expected 1")
    if lines_on != 1 or lines_off != 0:
        problems.append(f"access lines after one call each: on {lines_on} (expected 1), off {lines_off} (expected 0)")
    if status_on != 200 or requests_total(text_on) != 1:
        problems.append(f"on: GET /metrics {status_on}, {REQUESTS_METRIC} = {requests_total(text_on):.0f} "
                        "(expected 200 and 1)")
    if status_off != 404:
        problems.append(f"off: GET /metrics {status_off}, expected 404")
    return problems


def checked_recording(report: Report, pair: Pair, calls: list[Variant]) -> bool:
    """Make one sample call through each gateway and check what each recorded; print and return whether all fit."""
    if not checked(report, calls):
        return False
    problems = recording_problems(pair)
    for problem in problems:
        report.say(f"recording check failed, not timed: {problem}  {verdict(False)}")
    if not problems:
        report.say(f"   before timing, one call each: on -> 200, 1 row in {pair.log_path.name}, 1 access line, "
                   f"GET /metrics 200 with {REQUESTS_METRIC} 1; off -> 200, no access line, GET /metrics 404")
    return not problems


# --------------------------------------------------------------------------- timed rounds


def alternate(plan: Plan, workdir: Path, calls: list[Variant]) -> tuple[dict[str, Tally], dict[str, int]]:
    """Load one gateway at a time in rounds, alternating (warm-up before the first); return tallies and calls made."""
    targets = {call.name: call.load_target(workdir) for call in calls}
    tallies = {call.name: Tally() for call in calls}
    made = {call.name: 1 for call in calls}  # the sample call
    for index in range(plan.observe_rounds):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))  # on, off, off, on, ...: drift cancels
        for name in order:
            target = targets[name]
            if index == 0:
                made[name] += warm_up(plan, target)
            timed = measured_round(target, CONNECTIONS, plan, plan.observe_seconds, warmup=False)
            tallies[name].add(*timed)
            made[name] += timed[0].requests
    return tallies, made


def warm_up(plan: Plan, target: LoadTarget) -> int:
    """Run wrk for the warm-up time; return the calls it completed."""
    return run_wrk(target.url + target.path, target.script, CONNECTIONS, plan.warmup, plan.wrk_threads,
                   plan.load_cpus).requests


def cost_verdict(report: Report, plan: Plan, tallies: dict[str, Tally]) -> bool:
    """Print 1 - rps(on) / rps(off) against its target, CPU per call of both and each round's figures."""
    on, off = tallies[ON], tallies[OFF]
    cost = (1 - on.rps / off.rps) * 100 if off.rps else float("inf")
    ok = cost <= COST_MAX_PCT
    report.say(f"observability cost at c={CONNECTIONS}: 1 - {on.rps:.0f}/{off.rps:.0f} rps = {cost:.1f} % "
               f"(target <= {COST_MAX_PCT:.0f} %)  {verdict(ok)}")
    extra = on.cpu_us - off.cpu_us
    pct = extra / off.cpu_us * 100 if off.cpu_us else float("inf")
    report.say(f"  CPU per call: off {off.cpu_us:.0f} us, on {on.cpu_us:.0f} us = {extra:+.0f} us ({pct:+.1f} %); "
               f"p50 {off.p50:.2f} -> {on.p50:.2f} ms, p99 {off.p99:.2f} -> {on.p99:.2f} ms")
    costs = [(1 - ratio) * 100 for ratio in round_ratios(on, off)]
    extras = [a - b for a, b in zip(on.round_cpu_us, off.round_cpu_us, strict=True)]
    report.say(f"  each round: cost % {', '.join(f'{cost:.1f}' for cost in costs)} (median {median(costs):.1f}); "
               f"extra CPU per call us {', '.join(f'{extra:+.0f}' for extra in extras)} (median {median(extras):+.0f})")
    warn_noise(report, plan, tallies.values())
    return ok


# --------------------------------------------------------------------------- the request log after the run


def rows_verdict(report: Report, procs: Procs, pair: Pair, made: int, tail: int) -> bool:
    """Stop 'on' gracefully (its workers flush the log), count the rows against the calls made; return the verdict."""
    time.sleep(SETTLE_S)
    status, text = get(pair.on, "/metrics")
    counted = requests_total(text) if status == 200 else float("nan")
    lines = pair.access_lines(pair.on)
    procs.stop(pair.on.proc)
    code = pair.on.proc.popen.returncode
    rows = log_rows(pair.log_path)
    ok = rows >= made - CONNECTIONS and code == 0
    stop = "graceful, exit 0" if code == 0 else f"NOT graceful: exit {code}"
    report.say(f"request log: {rows} rows in {pair.log_path.name} after SIGTERM ({stop}) for {made} calls "
               f"wrk completed through on ({rows - made:+d}; up to +{tail} are calls in flight when a wrk run "
               f"ended; fewer than -{CONNECTIONS} fails)  {verdict(ok)}")
    report.say(f"  on before the stop: {REQUESTS_METRIC} {counted:.0f}, access lines {lines}; "
               f"off: {pair.access_lines(pair.off)} access lines")
    return ok


def observability(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream) -> list[bool]:
    """Compare the proxy path with request log, access lines and metrics on and all off; return the verdicts."""
    report.section(f"Observability (wrk -c{CONNECTIONS}, POST /v1/rerank on the proxy path, "
                   f"{len(RERANK_BODY)}-byte body)")
    report.say("on: the defaults (request log to on.sqlite in the work dir, JSON access lines to a file, metrics "
               "with PROMETHEUS_MULTIPROC_DIR from gunicorn.conf.py); off: " + OFF_TOML.replace("\n\n", "; ")
               .replace("\n", " ").strip())
    pair = start_pair(procs, plan, workdir)
    report.say(f"two gateways, each {plan.workers} workers x {plan.threads} threads on the same cores, loaded one "
               f"at a time: warmed up {plan.warmup:.0f} s, then {plan.observe_rounds} rounds x "
               f"{plan.observe_seconds:.0f} s in the order on, off, off, on, ...; p50, p99: means over the rounds")
    try:
        calls = variants(pair, upstream)
        if not checked_recording(report, pair, calls):
            return [False]
        tallies, made = alternate(plan, workdir, calls)
        print_table(report, plan, tallies, CONNECTIONS)
        verdicts = [cost_verdict(report, plan, tallies)]
        runs = plan.observe_rounds + 1  # wrk runs through 'on': the warm-up and the rounds (and the profiled one)
        if plan.profile_observability:
            made[ON] += profile_worker(report, plan, procs, workdir, calls[0].load_target(workdir), tallies[ON],
                                       tallies[OFF])
            runs += 1
        return [*verdicts, rows_verdict(report, procs, pair, made[ON], runs * CONNECTIONS)]
    finally:
        for server in (pair.on, pair.off):
            if server.proc.alive():
                procs.stop(server.proc)
