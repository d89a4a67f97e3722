"""The governance section: what a limited key costs on the proxy path, and the host-wide response cache.

    .venv/bin/python -m bench.run --only governance      # about 2 minutes (--quick: about 1)

Three figures, each over three rounds, with the median, the spread and a verdict:

1. Enforcement cost, SQLite state store. One Portico (the throughput section's workers, threads and pinning, the
   default request log, access lines and metrics) with two static keys: `bench`, unlimited, and `limited`, which
   has a matching allow-list (`openai/rerank-*`), rpm and tpm limits and a monthly budget all far too high to
   refuse (a [pricing] entry for the model makes every call reserve a real amount from the budget, then settle
   it). The load is the throughput section's: wrk -c16, POST /v1/rerank through the proxy path to the run's
   upstream (nginx; the fake provider when nginx cannot be had), alternating unlimited, limited, unlimited,
   limited... in the same gateway, so background load hits both alike; each key is warmed up 1 s before its
   first round. Figure: the median of the rounds' rps ratios limited / unlimited. Target >= 0.95 (cost <= 5 %).
   Before timing, sample calls check that the limits are live: the limited key's answers carry
   x-ratelimit-* headers with the remaining count going down, a model outside its allow-list gets 403, and a
   third key with a budget of 0 USD gets 429 budget_exceeded. After timing,
   the state store is read: it must have counted at least the limited key's timed calls.
2. The same with the Redis state store (`[state] backend = "redis://..."`, a throwaway redis-server pinned with
   wrk and the upstream). Target >= 0.90 (cost <= 10 %).
3. Host-wide cache: a Portico with the default number of workers (min(2 x cores + 1, 8): 5 on 2 cores) and the
   default cache (no [cache] table: each worker's memory in front of one SQLite file its master's workers
   share). (a) Hit ratio on fresh connections: for each of 20 cache namespaces one call stores the answer, then
   10 repeats go at once, each on a new connection (so they land on whichever worker accepts them); target: at
   least 99 % of the repeats say x-portkey-cache-status: HIT. The workers whose write syscalls moved during the
   repeats are shown, as a check that they spread; and the same repeats, started 50 ms after the storing call's
   answer, tell a worker that does not see the entry (a miss there too) from a repeat that arrived before the
   answer was stored (a miss only without the pause). (b) wrk -c16 cache hits vs the proxy path (the cache
   section's two configs) on the same gateway, alternating; target: cache-hit rps >= 2 x proxy rps (median of
   the rounds' ratios). With nginx, its request counter shows how many cache-hit calls reached it.

Every process the section starts listens on 127.0.0.1, on ports from bench.procs.free_port (which honours
PORTICO_TEST_PORT_BASE), and is stopped before the section returns.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median

from app.governance.gate import DEFAULT_OUTPUT_RESERVE
from app.governance.keys import STATIC_PREFIX, Budget
from app.governance.store import WINDOW_S, KeyUsage
from app.governance.stores import open_store
from app.settings import hash_key
from app.usage import PricingTable, Usage
from bench.config_engine import Variant, alternate, print_table
from bench.governance_cache import host_cache
from bench.loadgen import RERANK_BODY
from bench.plan import Plan
from bench.procs import LOOPBACK, BenchError, Proc, Procs, ensure_tool, free_port, pinned
from bench.report import Report, verdict
from bench.sections import Tally, warn_noise
from bench.targets import Server, portico_headers, start_portico
from bench.upstreams import Upstream
from tests.fakes.redis_server import find_redis_server

CONNECTIONS = 16
ROUNDS = 3
ROUND_S, QUICK_ROUND_S = 5.0, 2.0
SQLITE_RATIO_MIN = 0.95
REDIS_RATIO_MIN = 0.90
LIMITED_NAME = "limited"
LIMITED_KEY = "pk-bench-limited-not-a-secret"
# A key with nothing to spend: its sample call shows that budgets are checked on this path.
BROKE_NAME, BROKE_KEY, BROKE_USD = "broke", "pk-bench-broke-not-a-secret", 0.0
MODEL: str = json.loads(RERANK_BODY)["model"]  # rerank-v3.5, sent as provider openai
MODEL_PATTERN = "openai/rerank-*"  # matches it
REFUSED_MODEL = "gpt-4o"  # outside the allow-list: the sample call that must get 403
# Far beyond what a run can reach (about 2,000 calls a second at best), so nothing is ever refused.
RPM = 100_000_000
TPM = 10_000_000_000
BUDGET_USD = 1_000_000_000.0
# USD per million tokens for the rerank model: without a price the budget would reserve 0 for every call.
PRICE_INPUT, PRICE_OUTPUT = 1.0, 2.0
REDIS_START_S = 10.0
RELEASE_WAIT_S = 3.0  # after the last round, for the finished calls' reservations to be released in the store


@dataclass(frozen=True)
class Store:
    """A state store for the gateway file: a label, its [state] line, and how the bench opens it."""

    label: str
    toml: str
    backend: str
    path: str | None


def reservation_usd() -> float:
    """Return what the gateway reserves from the budget for one rerank call, by its own estimate and prices."""
    pricing = PricingTable.default().merged(PricingTable.parse_overrides(
        {f"openai/{MODEL}": {"input": PRICE_INPUT, "output": PRICE_OUTPUT}}))
    usage = Usage(model=MODEL, input_tokens=math.ceil(len(RERANK_BODY) / 4),
                  output_tokens=DEFAULT_OUTPUT_RESERVE)
    return pricing.cost("openai", usage).usd or 0.0


def round_seconds(plan: Plan) -> float:
    """Return the measured seconds of one round."""
    return QUICK_ROUND_S if plan.quick else ROUND_S


def gateway_tables(workdir: Path, name: str, store: Store) -> str:
    """Return the section's tables for the bench gateway file: its own log and state, a price, the limited key."""
    return f"""[logs]
path = "{workdir / f"{name}-logs.sqlite"}"

[state]
{store.toml}

[pricing."openai/{MODEL}"]
input = {PRICE_INPUT}
output = {PRICE_OUTPUT}

[[keys]]
name = "{LIMITED_NAME}"
sha256 = "{hash_key(LIMITED_KEY)}"
models = ["{MODEL_PATTERN}"]
limits = {{ rpm = {RPM}, tpm = {TPM} }}
budget = {{ usd = {BUDGET_USD}, period = "month" }}

[[keys]]
name = "{BROKE_NAME}"
sha256 = "{hash_key(BROKE_KEY)}"
budget = {{ usd = {BROKE_USD}, period = "month" }}
"""


def key_variants(server: Server, upstream: Upstream, label: str, seconds: float) -> list[Variant]:
    """Return the proxy call with the unlimited bench key and with the limited key, on one gateway."""
    headers = portico_headers(upstream.url)
    return [Variant(f"unlimited ({label})", server.port, server.proc.pid, headers, seconds=seconds),
            Variant(f"limited ({label})", server.port, server.proc.pid, {**headers, "x-portkey-api-key": LIMITED_KEY},
                    seconds=seconds)]


# --------------------------------------------------------------------------- checks before and after timing


def call(variant: Variant, body: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Make one call on a new connection; return status, headers and body."""
    conn = http.client.HTTPConnection(LOOPBACK, variant.port, timeout=10)
    try:
        conn.request("POST", variant.path, body, {"Content-Type": "application/json", **variant.headers})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def limits_problems(unlimited: Variant, limited: Variant) -> list[str]:
    """Return what is wrong with the sample calls (empty: the limits are live and nothing is refused)."""
    status, headers, body = call(unlimited, RERANK_BODY)
    if status != 200:
        return [f"unlimited: status {status}: {body[:300]!r}"]
    if headers.get("x-ratelimit-limit-requests") is not None:
        return ["unlimited: answered with x-ratelimit-limit-requests, as if it were limited"]
    remaining = []
    for _ in range(2):
        status, headers, body = call(limited, RERANK_BODY)
        if status != 200:
            return [f"limited: status {status}: {body[:300]!r}"]
        if headers.get("x-ratelimit-limit-requests") != str(RPM):
            return [f"limited: x-ratelimit-limit-requests {headers.get('x-ratelimit-limit-requests')!r}, "
                    f"expected {RPM}"]
        remaining.append(int(headers.get("x-ratelimit-remaining-requests", "-1")))
    problems = [] if remaining[1] < remaining[0] else [f"limited: x-ratelimit-remaining-requests did not go down: "
                                                       f"{remaining}"]
    status, _, body = call(limited, RERANK_BODY.replace(MODEL, REFUSED_MODEL))
    if status != 403 or b"model_not_allowed" not in body:
        problems.append(f"limited, model {REFUSED_MODEL}: status {status}, expected 403 model_not_allowed: "
                        f"{body[:300]!r}")
    status, _, body = call(replace(limited, headers={**limited.headers, "x-portkey-api-key": BROKE_KEY}), RERANK_BODY)
    if status != 429 or b"budget_exceeded" not in body:
        problems.append(f"{BROKE_NAME} (budget {BROKE_USD:g} USD): status {status}, expected 429 budget_exceeded: "
                        f"{body[:300]!r}")
    return problems


def limited_usage(store: Store) -> KeyUsage:
    """Return the limited key's use as the store has it now, read as a gateway would."""
    now = time.time()
    opened = open_store(store.backend, store.path)
    try:
        return opened.usage(STATIC_PREFIX + LIMITED_NAME, now, Budget(BUDGET_USD, "month").period_of(now))
    finally:
        opened.close()


def settled_usage(store: Store) -> tuple[KeyUsage, float]:
    """Wait until the limited key's reservations are all released (at most RELEASE_WAIT_S); return its use, wait."""
    started = time.monotonic()
    used = limited_usage(store)
    while used.reserved_usd > 0 and time.monotonic() - started < RELEASE_WAIT_S:
        time.sleep(0.1)
        used = limited_usage(store)
    return used, time.monotonic() - started


def store_check(report: Report, store: Store, limited: Tally, started: float) -> bool:
    """Read the limited key's use from the store: it must have counted the timed calls; print and return that."""
    span = time.monotonic() - started
    used, waited = settled_usage(store)
    counted = used.requests >= limited.requests
    # Calls older than the rpm window have left the count: only a run shorter than it can be checked.
    ok = counted or span > WINDOW_S
    shown = "" if span <= WINDOW_S else f" (not checked: the rounds took {span:.0f} s, more than the window)"
    report.say(f"  the store after the rounds: {used.requests} requests of {LIMITED_NAME!r} in the last "
               f"{WINDOW_S:.0f} s, for {limited.requests} timed calls (+ the warm-up's and up to {CONNECTIONS} in "
               f"flight per run){shown}{'' if ok else ': NOT COUNTED, the limits were not enforced'}")
    held = (f"WARNING: {used.reserved_usd:.6f} USD still reserved {waited:.1f} s after the last round (about "
            f"{used.reserved_usd / reservation_usd():.0f} calls' reservations never released)"
            if used.reserved_usd > 0 else f"all reservations released {waited:.1f} s after the last round")
    report.say(f"  budget: spent {used.spent_usd:.6f} USD (the rerank answers carry no token usage); {held}")
    return ok


# --------------------------------------------------------------------------- figures 1 and 2


def cost_verdict(report: Report, plan: Plan, tallies: dict[str, Tally], label: str, ratio_min: float) -> bool:
    """Print limited / unlimited rps (median of the rounds, spread, CPU per call) against its target."""
    base, limited = tallies.values()
    ratios = [rps / base_rps if base_rps else 0.0 for rps, base_rps in zip(limited.round_rps, base.round_rps,
                                                                              strict=True)]
    middle = median(ratios)
    ok = middle >= ratio_min
    report.say(f"limited/unlimited rps at c={CONNECTIONS}, {label}: median {middle:.3f} (rounds "
               f"{', '.join(f'{ratio:.3f}' for ratio in ratios)}; spread {min(ratios):.3f}-{max(ratios):.3f}), "
               f"cost {(1 - middle) * 100:.1f} % (target: ratio >= {ratio_min:.2f}, cost <= "
               f"{(1 - ratio_min) * 100:.0f} %)  {verdict(ok)}")
    extra = limited.cpu_us - base.cpu_us
    pct = extra / base.cpu_us * 100 if base.cpu_us else float("inf")
    report.say(f"  all rounds together: {limited.rps:.0f}/{base.rps:.0f} rps = "
               f"{limited.rps / base.rps if base.rps else 0.0:.3f}; gateway CPU per call: unlimited "
               f"{base.cpu_us:.0f} us, limited {limited.cpu_us:.0f} us = {extra:+.0f} us ({pct:+.1f} %)")
    warn_noise(report, plan, tallies.values())
    return ok


def enforcement(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream, store: Store,
                ratio_min: float, number: int) -> bool:
    """Start a gateway on the store, time the unlimited and the limited key in turn; return the verdict."""
    name = f"portico-gov-{store.label.lower()}"
    report.say()
    report.say(f"{number}. enforcement cost, {store.label} state store ([state] {store.toml})")
    server = start_portico(procs, workdir, plan.workers, plan.threads, plan.server_cpus, name=name,
                           observe=gateway_tables(workdir, name, store))
    try:
        variants = key_variants(server, upstream, store.label, round_seconds(plan))
        problems = limits_problems(*variants)
        for problem in problems:
            report.say(f"sample call failed, not timed: {problem}  {verdict(False)}")
        if problems:
            return False
        report.say(f"   sample calls: unlimited 200 without x-ratelimit-*; limited 200 with "
                   f"x-ratelimit-limit-requests {RPM}, remaining going down; limited with model {REFUSED_MODEL} 403 "
                   f"model_not_allowed; a key with a {BROKE_USD:g} USD budget 429 budget_exceeded")
        started = time.monotonic()
        tallies = alternate(plan, workdir, variants, CONNECTIONS, ROUNDS)
        print_table(report, plan, tallies, CONNECTIONS)
        ok = cost_verdict(report, plan, tallies, store.label, ratio_min)
        return store_check(report, store, tallies[variants[1].name], started) and ok
    finally:
        procs.stop(server.proc)


# --------------------------------------------------------------------------- a throwaway redis-server


def answers_ping(port: int) -> bool:
    """Tell whether a Redis on loopback:port answers PING."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_binary() -> str | None:
    """Return redis-server's path, installing the package when it is missing and possible; None if not."""
    try:
        return find_redis_server()
    except RuntimeError:
        return ensure_tool("redis-server", "redis-server")


@contextmanager
def redis_server(procs: Procs, plan: Plan, workdir: Path, binary: str) -> Iterator[str]:
    """Run redis-server (no persistence) with wrk and the upstream; yield its URL, stop it on the way out."""
    port = free_port()
    cmd = [binary, "--save", "", "--appendonly", "no", "--bind", LOOPBACK, "--port", str(port), "--daemonize", "no",
           "--dir", str(workdir)]
    proc: Proc = procs.start("redis", pinned(cmd, plan.load_cpus), stdout=workdir / "redis.log",
                             stderr=workdir / "redis.stderr")
    try:
        deadline = time.monotonic() + REDIS_START_S
        while not answers_ping(port):
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError(f"redis-server did not answer PING on {LOOPBACK}:{port}: {proc.tail()}")
            time.sleep(0.05)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        procs.stop(proc)


def with_redis(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream) -> list[bool]:
    """Run figure 2 on a throwaway redis-server; no verdict when redis-server cannot be had."""
    binary = redis_binary()
    if binary is None:
        report.say()
        report.say("2. enforcement cost, Redis state store: skipped, redis-server is not installed and cannot be "
                   "(apt-get install redis-server)")
        return []
    with redis_server(procs, plan, workdir, binary) as url:
        store = Store("Redis", f'backend = "{url}"', url, None)
        return [enforcement(report, plan, procs, workdir, upstream, store, REDIS_RATIO_MIN, 2)]


def governance(report: Report, plan: Plan, procs: Procs, workdir: Path, upstream: Upstream) -> list[bool]:
    """Measure what key limits and budgets cost (SQLite, Redis) and the host-wide cache; return the verdicts."""
    report.section(f"Governance and the host-wide cache (wrk -c{CONNECTIONS}, POST /v1/rerank on the proxy path, "
                   f"{len(RERANK_BODY)}-byte body)")
    report.say(f"limited key: models [{MODEL_PATTERN!r}], limits rpm {RPM:,} and tpm {TPM:,}, budget "
               f"{BUDGET_USD:,.0f} USD a month (the model priced at {PRICE_INPUT:g}/{PRICE_OUTPUT:g} USD per million "
               f"input/output tokens, so each call reserves {reservation_usd():.6f} USD, then settles); unlimited: the "
               "bench key, no fields")
    report.say(f"figures 1 and 2: one gateway each, {plan.workers} workers x {plan.threads} threads, the keys loaded "
               f"in turn (unlimited, limited, ...): {ROUNDS} rounds x {round_seconds(plan):.0f} s each, a "
               f"{plan.warmup:.0f} s warm-up before each key's first; figure: the median of the rounds' ratios")
    sqlite = Store("SQLite", f'path = "{workdir / "governance-state.sqlite"}"', "sqlite",
                   str(workdir / "governance-state.sqlite"))
    verdicts = [enforcement(report, plan, procs, workdir, upstream, sqlite, SQLITE_RATIO_MIN, 1)]
    verdicts += with_redis(report, plan, procs, workdir, upstream)
    verdicts += host_cache(report, plan, procs, workdir, upstream, ROUNDS, round_seconds(plan))
    return verdicts
