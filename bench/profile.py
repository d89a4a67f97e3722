"""Where the 'on' gateway's observability time goes: py-spy on one worker under load, GIL samples by function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import procfs
from bench.plan import RESULTS, Plan
from bench.procs import Procs, pinned
from bench.report import Report
from bench.sections import LoadTarget, Tally, measured_round
from bench.targets import ROOT

RATE_HZ = 250
SAMPLE_S = 8
LOAD_S = 10  # wrk runs around py-spy's window (it attaches in well under a second)
CONNECTIONS = 16
Frame = tuple[str, str]  # (function, file name) as py-spy prints them: "CallObserver._record (observe.py:64)"
RECORD: Frame = ("CallObserver._record", "observe.py")
RAW_COPY = RESULTS.parent / "observability-py-spy.raw"  # git-ignored, like the report


@dataclass(frozen=True)
class Part:
    """A function whose inclusive GIL samples are shown; `child` ones are counted only under RECORD."""

    label: str
    frame: Frame
    child: bool = False
    only_on: bool = False  # switched off in the 'off' gateway (the rest also runs there)


PARTS = (
    Part("CallObserver._record", RECORD),
    Part("  UsageTap.result", ("UsageTap.result", "tap.py"), child=True),
    Part("  PricingTable.cost", ("PricingTable.cost", "pricing.py"), child=True),
    Part("  usage_fields", ("usage_fields", "logs.py"), child=True, only_on=True),
    Part("  access_line", ("access_line", "logs.py"), child=True, only_on=True),
    Part("  write_access_line", ("write_access_line", "logs.py"), child=True, only_on=True),
    Part("  log_record", ("log_record", "sink.py"), child=True, only_on=True),
    Part("  LogStore.record (queue append)", ("LogStore.record", "store.py"), child=True, only_on=True),
    Part("  GatewayMetrics.call_finished", ("GatewayMetrics.call_finished", "metrics.py"), child=True, only_on=True),
    Part("UsageTap.feed", ("UsageTap.feed", "tap.py")),
    Part("CallObserver.tap", ("CallObserver.tap", "observe.py")),
    Part("CallObserver.started (in-flight gauge)", ("CallObserver.started", "observe.py"), only_on=True),
    Part("log-store writer thread (Writer._run)", ("Writer._run", "writer.py"), only_on=True),
)


def parse_frame(text: str) -> Frame:
    """Return (function, file name) of one py-spy frame such as 'Writer._run (app/logstore/writer.py:88)'."""
    name, _, where = text.rpartition(" (")
    return name, Path(where.rsplit(":", 1)[0]).name


def read_raw(path: Path) -> tuple[int, Counter[str]]:
    """Return the total GIL samples and the inclusive samples of each part, from py-spy's raw (collapsed) output."""
    total, counts = 0, Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = {parse_frame(frame) for frame in stack.split(";")}
        total += int(count)
        for part in PARTS:
            if part.frame in frames and (not part.child or RECORD in frames):
                counts[part.label] += int(count)
    return total, counts


def py_spy() -> str:
    """Return the py-spy next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy") or "py-spy"


def record(procs: Procs, plan: Plan, workdir: Path, pid: int, target: LoadTarget) -> tuple[Path | None, Tally, str]:
    """Sample pid with py-spy while wrk loads the target; return the raw file (None on failure), the run, a note."""
    out = workdir / "py-spy.raw"
    # --nonblocking: pausing the worker for each sample wakes the main thread's poll() (EINTR), which then takes
    # the GIL; blocking mode so puts almost every GIL sample on gthread's event loop instead of the request threads.
    cmd = [py_spy(), "record", "--gil", "--nonblocking", "-r", str(RATE_HZ), "-d", str(SAMPLE_S), "-f", "raw",
           "-o", str(out), "--pid", str(pid)]
    spy = procs.start("py-spy", pinned(cmd, plan.load_cpus), stdout=workdir / "py-spy.stdout",
                      stderr=workdir / "py-spy.stderr")
    run = Tally()
    run.add(*measured_round(target, CONNECTIONS, plan, LOAD_S, warmup=False))
    try:
        spy.popen.wait(timeout=SAMPLE_S + 10)
    except subprocess.TimeoutExpired:
        pass
    code = spy.popen.returncode
    procs.stop(spy)
    if code != 0 or not out.exists():
        return None, run, f"py-spy exited {code}: {spy.tail(400).strip()}"
    return out, run, ""


def profile_worker(report: Report, plan: Plan, procs: Procs, workdir: Path, target: LoadTarget, on: Tally,
                   off: Tally) -> int:
    """Profile one 'on' worker under c=16 and print the observability parts in % and us per call; return calls made."""
    worker = procfs.children(target.pid)[0]
    report.say()
    out, run, problem = record(procs, plan, workdir, worker, target)
    if out is None:
        report.say(f"profile failed: {problem}")
        return run.requests
    total, counts = read_raw(out)
    RAW_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out, RAW_COPY)
    cpu_us = on.cpu_us
    report.say(f"profile: py-spy record --gil --nonblocking -r {RATE_HZ} -d {SAMPLE_S} -f raw on one 'on' worker "
               f"(pid {worker}) under wrk -c{CONNECTIONS} for {LOAD_S} s ({run.rps:.0f} rps, {run.cpu_us:.0f} us CPU "
               f"per call while sampled); {total} GIL samples, raw stacks saved to {RAW_COPY.relative_to(ROOT)}")
    report.say(f"us/call = inclusive share of the worker's GIL samples x {cpu_us:.0f} us (on's CPU per call in the "
               "timed rounds)")
    print_parts(report, total, counts, cpu_us)
    extra = on.cpu_us - off.cpu_us
    only_on = sum(counts[part.label] for part in PARTS if part.only_on) / total * cpu_us if total else 0.0
    report.say(f"switched off in 'off' (usage_fields, access line, log record + queue, metrics, writer thread): "
               f"{only_on:.0f} us per call by the profile; measured on - off: {extra:+.0f} us")
    return run.requests


def print_parts(report: Report, total: int, counts: Counter[str], cpu_us: float) -> None:
    """Print one line per part (and what _record spends outside its listed children): incl % and us per call."""
    report.say(f"{'part':<44}{'incl %':>8}{'us/call':>9}")
    record_part, *others = PARTS
    inside = [part for part in others if part.child]
    rest = counts[record_part.label] - sum(counts[part.label] for part in inside)
    rows = [(record_part.label, counts[record_part.label]), *((part.label, counts[part.label]) for part in inside),
            ("  (rest of _record)", rest), *((part.label, counts[part.label]) for part in others if not part.child)]
    for label, samples in rows:
        share = samples / total if total else 0.0
        report.say(f"{label:<44}{share * 100:>8.1f}{share * cpu_us:>9.1f}")
