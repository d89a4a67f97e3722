"""Figure 3 of the governance section: the host-wide response cache on a gateway with the default worker count.

Repeats of a cached call on fresh connections must hit whichever worker takes them, and cache hits must still
be at least twice as fast as the proxy path. See the docstring of bench/governance.py.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from statistics import median

from app.settings import default_workers
from bench import cache_guardrails, procfs
from bench.cache_guardrails import CACHE_RATIO_MIN, MISS_SHARE_MAX, cache_variants, fill_cache, post, runs_of
from bench.config_engine import Variant, checked, print_table
from bench.plan import Plan
from bench.procs import Procs
from bench.report import Report, verdict
from bench.sections import Tally, measured_round, warn_noise
from bench.targets import Server, start_portico
from bench.upstreams import Upstream, requests_served

CONNECTIONS = 16
ENTRIES = 20  # cache namespaces, each stored by one call and then repeated
REPEATS = 10  # repeats of each entry, sent at once, each on a new connection
HIT_SHARE_MIN = 0.99
# The same repeats again, started this long after the storing call's answer: a miss that remains is one the
# workers do not share; one that goes away was a repeat that arrived before the answer was stored.
PAUSE_S = 0.05
NAMESPACE = "portico-bench-fresh"


def cache_tables(workdir: Path, name: str) -> str:
    """Return the gateway file's extra tables: a request log and a state store of its own; no [cache] (the default)."""
    logs, state = workdir / f"{name}-logs.sqlite", workdir / f"{name}-state.sqlite"
    return f'[logs]\npath = "{logs}"\n\n[state]\npath = "{state}"\n'


def worker_writes(master: int) -> dict[int, int]:
    """Return the write syscalls each worker of a gunicorn master has made so far (/proc/<pid>/io syscw)."""
    counts = {}
    for pid in procfs.children(master):
        try:
            lines = Path(f"/proc/{pid}/io").read_text().splitlines()
        except OSError:
            continue  # the worker ended while we looked
        counts[pid] = next(int(line.split()[1]) for line in lines if line.startswith("syscw:"))
    return counts


def fresh_repeats(hit: Variant, pause_s: float) -> tuple[list[str], list[str], str | None]:
    """Store ENTRIES answers, repeat each REPEATS times at once on new connections; return both statuses, problem.

    pause_s: how long after the storing call's answer the repeats start.
    """
    stored: list[str] = []
    repeats: list[str] = []
    with ThreadPoolExecutor(REPEATS) as pool:
        for index in range(ENTRIES):
            namespace = f"{NAMESPACE}-{pause_s:g}-{index}"
            entry = replace(hit, headers={**hit.headers, "x-portkey-cache-namespace": namespace})
            try:
                first = post(entry)
                time.sleep(pause_s)
                answers = list(pool.map(post, [entry] * REPEATS))
            except OSError as err:
                return stored, repeats, f"{namespace}: {err}"
            bad = [answer for answer in (first, *answers) if answer.status != 200]
            if bad:
                return stored, repeats, f"{namespace}: status {bad[0].status}: {bad[0].body[:300]!r}"
            stored.append(first.cache_status or "none")
            repeats += [answer.cache_status or "none" for answer in answers]
    return stored, repeats, None


def hit_ratio(report: Report, server: Server, hit: Variant, workers: int) -> bool:
    """Print the share of HITs among repeats on fresh connections, and the workers they reached; return the verdict."""
    before = worker_writes(server.proc.pid)
    stored, repeats, problem = fresh_repeats(hit, 0.0)
    after = worker_writes(server.proc.pid)
    paused: list[str] = []
    if not problem:
        _, paused, problem = fresh_repeats(hit, PAUSE_S)
    if problem:
        report.say(f"3a. repeats on fresh connections failed: {problem}  {verdict(False)}")
        return False
    hits = repeats.count("HIT")
    share = hits / len(repeats)
    ok = share >= HIT_SHARE_MIN
    report.say(f"3a. hit ratio of repeats on fresh connections: {hits}/{len(repeats)} = {share:.1%} "
               f"(target >= {HIT_SHARE_MIN:.0%})  {verdict(ok)}")
    counted = ", ".join(f"{status} {count}" for status, count in Counter(repeats).most_common())
    moved = sum(1 for pid, count in after.items() if count > before.get(pid, count))
    report.say(f"   {ENTRIES} entries, each stored by one call ({runs_of(stored)}), then {REPEATS} repeats at once, "
               f"a new connection each: {counted}; workers that answered (write syscalls moved): {moved} of "
               f"{workers}")
    report.say(f"   the same, the repeats started {PAUSE_S * 1000:.0f} ms after the storing call's answer: "
               f"{paused.count('HIT')}/{len(paused)} HIT (a miss here is a worker that does not see the entry; one "
               "only above, a repeat that came before the answer was stored)")
    return ok


def timed(plan: Plan, workdir: Path, variants: list[Variant], upstream: Upstream,
          rounds: int) -> tuple[dict[str, Tally], int | None]:
    """Alternate the variants at c=16; count the cache-hit calls that reached nginx (None: not nginx, no counter)."""
    proxy, hit = variants
    targets = {variant.name: variant.load_target(workdir) for variant in variants}
    tallies = {variant.name: Tally() for variant in variants}
    reached = 0 if upstream.serves_chat else None
    for index in range(rounds):
        for variant in variants:
            counting = reached is not None and variant is hit
            if counting:
                time.sleep(cache_guardrails.SETTLE_S)  # the proxy run's last calls may still be on their way to nginx
                before = requests_served(upstream)
            tallies[variant.name].add(*measured_round(targets[variant.name], CONNECTIONS, plan, variant.seconds,
                                                      warmup=index == 0))
            if counting and reached is not None:
                reached += requests_served(upstream) - before - 1  # the status request counts itself
    return tallies, reached


def speed_verdict(report: Report, plan: Plan, tallies: dict[str, Tally], reached: int | None) -> bool:
    """Print cache-hit rps / proxy rps (median of the rounds, spread) against its target; return the verdict."""
    proxy, hit = tallies.values()
    ratios = cache_guardrails.round_ratios(hit, proxy)
    middle = median(ratios)
    hits_only = reached is None or reached <= hit.requests * MISS_SHARE_MAX
    ok = middle >= CACHE_RATIO_MIN and hits_only
    report.say(f"3b. cache hit/proxy rps at c={CONNECTIONS}: median {middle:.2f} (rounds "
               f"{', '.join(f'{ratio:.2f}' for ratio in ratios)}; spread {min(ratios):.2f}-{max(ratios):.2f}) "
               f"(target >= {CACHE_RATIO_MIN})  {verdict(ok)}")
    cpu_ratio = proxy.cpu_us / hit.cpu_us if hit.cpu_us else 0.0
    overall = hit.rps / proxy.rps if proxy.rps else 0.0
    report.say(f"  all rounds together: {hit.rps:.0f}/{proxy.rps:.0f} rps = {overall:.2f}; "
               f"CPU per call: proxy {proxy.cpu_us:.0f} us, cache hit {hit.cpu_us:.0f} us = {cpu_ratio:.2f} x cheaper")
    if reached is None:
        report.say("  (the upstream has no request counter: whether the timed calls were hits is not checked)")
    else:
        report.say(f"  cache-hit calls that reached nginx, warm-up included: {reached} of {hit.requests} timed "
                   f"(at most {MISS_SHARE_MAX:.0%}{'' if hits_only else ': NOT MET, the rps are not cache hits'})")
    warn_noise(report, plan, tallies.values())
    return ok


def host_cache(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream, rounds: int,
               seconds: float) -> list[bool]:
    """Start a gateway with the default workers and cache; measure fresh-connection hits and hit speed."""
    workers, name = default_workers(), "portico-gov-cache"
    report.say()
    report.say(f"3. host-wide cache: a gateway with the default {workers} workers x {plan.threads} threads and the "
               "default cache (no [cache] table: each worker's memory in front of one SQLite file in the master's "
               "run directory)")
    server = start_portico(procs, workdir, workers, plan.threads, plan.server_cpus, name=name,
                           observe=cache_tables(workdir, name))
    try:
        proxy, hit = (replace(variant, name=f"{variant.name} ({workers} workers)", seconds=seconds)
                      for variant in cache_variants(plan, server, upstream))
        report.say(f"   cached call: x-portkey-config {hit.headers['x-portkey-config']}; proxy: the same without cache")
        if not checked(report, [proxy]):
            return [False]
        verdicts = [hit_ratio(report, server, hit, workers)]
        seen, problem = fill_cache(hit)
        if problem:
            report.say(f"cache fill failed, not timed: {problem}  {verdict(False)}")
            return [*verdicts, False]
        report.say(f"   before timing, the wrk call's entry: {runs_of(seen)} (a new connection each); then "
                   f"{rounds} rounds x {seconds:.0f} s alternating proxy and cache hit")
        tallies, reached = timed(plan, workdir, [proxy, hit], upstream, rounds)
        print_table(report, plan, tallies, CONNECTIONS)
        return [*verdicts, speed_verdict(report, plan, tallies, reached)]
    finally:
        procs.stop(server.proc)
