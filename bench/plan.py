"""What one benchmark run does: durations, concurrencies, counts, gunicorn sizing and CPU placement."""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.txt"
# In the order they run.
SECTIONS = ("throughput", "config", "cache", "translation", "observability", "governance", "streaming", "rss",
            "hardening", "capacity")


@dataclass(frozen=True)
class Plan:
    """The settings of one run."""

    quick: bool
    duration: float  # measured seconds per target and concurrency, split over `rounds`
    rounds: int
    warmup: float
    concurrencies: tuple[int, ...]
    stream_calls: int
    rss_steps: tuple[int, int]
    rss_connections: int
    workers: int
    threads: int
    server_cpus: str | None  # where gunicorn runs (floor and Portico), when pinned
    load_cpus: str | None  # where wrk and the upstreams run, when pinned
    sections: tuple[str, ...] = SECTIONS
    config_rounds: int = 3  # config engine section: alternating rounds per variant
    config_seconds: float = 3.0  # config engine section: measured seconds per variant and round
    cache_rounds: int = 4  # cache and guardrails section: alternating rounds per variant
    cache_seconds: float = 3.0  # cache and guardrails section: measured seconds per variant and round
    observe_rounds: int = 6  # observability section: alternating rounds per instance
    observe_seconds: float = 3.0  # observability section: measured seconds per instance and round
    profile_observability: bool = False  # observability section: py-spy one "on" worker afterwards

    def runs(self, section: str) -> bool:
        """Return whether this run includes the section."""
        return section in self.sections

    @property
    def round_seconds(self) -> float:
        """Return the length of one measured wrk run."""
        return self.duration / self.rounds

    @property
    def wrk_threads(self) -> int:
        """Return wrk's thread count: one when wrk shares a single pinned core with the upstream."""
        return 1 if self.load_cpus is not None and len(cpu_list(self.load_cpus)) == 1 else 2

    @property
    def server_cores(self) -> list[int]:
        """Return the cores gunicorn is pinned to (empty when not pinned)."""
        return cpu_list(self.server_cpus) if self.server_cpus else []


def cpu_list(spec: str) -> list[int]:
    """Return the cores of a taskset list such as '0', '0,1' or '0-2'."""
    cores: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cores += range(int(low), int(high or low) + 1)
    return cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description="Load benchmark: direct vs Flask floor vs Portico.")
    parser.add_argument("--quick", action="store_true", help="short runs (about two minutes in all)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds per target and concurrency (default 10, quick 3)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", "2")),
                        help="gunicorn workers for floor and Portico (default GATEWAY_WORKERS or 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GATEWAY_THREADS", "16")),
                        help="threads per worker for floor and Portico (default GATEWAY_THREADS or 16)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin gunicorn and the load generator + upstream to separate cores")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--profile-observability", action="store_true",
                        help="after the observability section's rounds, py-spy one worker of the 'on' gateway "
                             "(about 12 s more) and show where the cost goes")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to save the report "
                        "(default bench/results/latest.txt)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    """Turn the arguments into a Plan."""
    server_cpus, load_cpus = (None, None) if args.no_pin else split_cpus()
    duration = args.duration or (3.0 if args.quick else 10.0)
    return Plan(quick=args.quick, duration=duration, rounds=1 if args.quick or duration < 4 else 2,
                warmup=1.0, concurrencies=(1, 16, 64), stream_calls=10 if args.quick else 50,
                rss_steps=(10_000, 20_000) if args.quick else (50_000, 100_000), rss_connections=16,
                workers=args.workers, threads=args.threads, server_cpus=server_cpus, load_cpus=load_cpus,
                sections=tuple(name for name in SECTIONS if name in (args.only or SECTIONS)),
                config_rounds=2 if args.quick else 3, config_seconds=1.0 if args.quick else 3.0,
                cache_rounds=2 if args.quick else 4, cache_seconds=1.0 if args.quick else 3.0,
                observe_rounds=3 if args.quick else 6, observe_seconds=2.0 if args.quick else 3.0,
                profile_observability=args.profile_observability)


def split_cpus() -> tuple[str | None, str | None]:
    """Return (gunicorn cpus, wrk + upstream cpus): the last usable core for the load, the rest for gunicorn."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return ",".join(map(str, cpus[:-1])), str(cpus[-1])
